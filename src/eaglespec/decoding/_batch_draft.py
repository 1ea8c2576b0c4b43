"""The draft side of a batched speculative step: the draft's padded KV cache for B running rows.

Same conventions as `expansion.py`, laid out as the padded batch caches of `_batch_cache.py`: row b's draft
entries are slots [0, P_b), the rest are holes. Trees are proposed by the draft's `expansion.TreeExpander`, one
draft forward per tree depth for all rows.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import append_row, keep_row_positions, prefix_mask, select_rows
from eaglespec.decoding.cache import new_cache
from eaglespec.decoding.expansion import TreeExpander
from eaglespec.decoding.tree import DraftTree


class BatchDrafter:
    """Runs an EAGLE draft head for B sequences at once and proposes one `DraftTree` per row.

    `expander` holds the tree settings (those of the generator's batch-size-1 `Drafter`, already checked).
    """

    def __init__(self, expander: TreeExpander):
        self.expander = expander
        self.draft = expander.draft
        self.cache: DynamicCache | None = None
        self.last_hidden: torch.Tensor | None = None  # [B, H]: draft output at position length_b - 1

    @property
    def dtype(self) -> torch.dtype:
        return next(self.draft.parameters()).dtype

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, input_ids: torch.Tensor, target_features: torch.Tensor) -> None:
        """A new last row: input_ids [1, n] = x_{t+1} and target_features [1, n, F] = f_t for t = 0..n-1."""
        cache = new_cache()
        hidden = self.draft.project_target_features(target_features.to(self.dtype))
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        out = self.draft(input_ids, hidden, position_ids=positions, cache=cache)  # causal
        self.cache = append_row(self.cache, cache)
        last = out[:, -1]
        self.last_hidden = last if self.last_hidden is None else torch.cat([self.last_hidden, last])

    def select_rows(self, rows: torch.Tensor, num_slots: int) -> None:
        """Keep only the batch rows `rows` (ascending); num_slots = the longest remaining row."""
        if rows.numel() == 0:
            self.cache, self.last_hidden = None, None
            return
        select_rows(self.cache, rows, num_slots)
        self.last_hidden = self.last_hidden[rows]

    @torch.no_grad()
    def catch_up(self, input_ids: torch.Tensor, target_features: torch.Tensor, counts: list[int],
                 lengths: list[int]) -> None:
        """Append counts[b] accepted tokens per row in one forward. input_ids [B, M] (x_{t+1}, right-padded),
        target_features [B, M, F] (f_t of the target), lengths[b] = row b's draft entries before the call."""
        B, M = input_ids.shape
        device = input_ids.device
        slots = self.cache.get_seq_length()
        length = torch.tensor(lengths, device=device)
        count = torch.tensor(counts, device=device)
        j = torch.arange(M, device=device)
        causal = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < count[:, None, None])  # [B, M, M]
        own = causal | torch.eye(M, dtype=torch.bool, device=device)  # padding queries see themselves only
        mask = torch.cat([prefix_mask(length, slots)[:, None, :].expand(B, M, slots), own], dim=2)
        hidden = self.draft.project_target_features(target_features.to(self.dtype))
        out = self.draft(input_ids, hidden, position_ids=length[:, None] + j[None], attention_mask=mask[:, None],
                         cache=self.cache)  # [B, M, H]
        keep_row_positions(self.cache, lengths, [torch.arange(c, device=device) for c in counts], base=slots)
        self.last_hidden = out[torch.arange(B, device=device), count - 1]

    def propose(self, roots: list[int], lengths: list[int], depths: list[int]) -> list[DraftTree]:
        """One tree per row, rooted at roots[b] (sequence position lengths[b]), at most depths[b] deep."""
        length = torch.tensor(lengths, device=self.last_hidden.device)
        return self.expander.propose(self.cache, self.last_hidden, length, roots, depths)
