"""The draft side of a batched speculative step for a block drafter (DFlash): B running rows at once.

Laid out as the padded batch caches of `_batch_cache.py`: row b's context keys / values (the target features
f_0..f_{P_b - 1}) are slots [0, P_b), the rest are holes. New context goes in at once with a forward of no block
tokens (keys and values only); a proposal runs every row's block [root_b, MASK, ...] (positions P_b..) in one
forward over the cached context and drops the blocks' keys and values again.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import append_row, keep_row_positions, prefix_mask, select_rows
from eaglespec.decoding.block_drafter import block_depth
from eaglespec.decoding.cache import new_cache, truncate
from eaglespec.decoding.tree import DraftTree


class BatchBlockDrafter:
    """Runs a DFlash draft for B sequences at once and proposes one chain per row (`BatchDrafter`'s interface) of
    `depth` tokens (default block_size - 1; see `block_drafter`)."""

    def __init__(self, draft, depth: int | None = None):
        self.draft = draft
        self.depth = block_depth(draft.block_size, depth)
        self.cache: DynamicCache | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.draft.parameters()).dtype

    def _add_context(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> None:
        """Keys and values of the context `features` [B, C, F] at `positions` [B, C] appended to `cache`."""
        empty = torch.zeros(features.shape[0], 0, dtype=torch.long, device=features.device)
        self.draft(empty, self.draft.project_target_features(features.to(self.dtype)), positions, mask, cache=cache)

    @torch.no_grad()
    def admit(self, input_ids: torch.Tensor, target_features: torch.Tensor) -> None:
        """A new last row: target_features [1, n, F] = f_t for t = 0..n-1 (input_ids, x_{t+1}, are not needed)."""
        cache, n = new_cache(), target_features.shape[1]
        mask = torch.zeros(1, 1, 0, n, dtype=torch.bool, device=target_features.device)
        self._add_context(target_features, torch.arange(n, device=target_features.device)[None], mask, cache)
        self.cache = append_row(self.cache, cache)

    def select_rows(self, rows: torch.Tensor, num_slots: int) -> None:
        """Keep only the batch rows `rows` (ascending); num_slots = the longest remaining row."""
        if rows.numel() == 0:
            self.cache = None
            return
        select_rows(self.cache, rows, num_slots)

    @torch.no_grad()
    def catch_up(self, input_ids: torch.Tensor, target_features: torch.Tensor, counts: list[int],
                 lengths: list[int]) -> None:
        """Append counts[b] accepted positions per row: target_features [B, M, F] (f_t, right-padded);
        lengths[b] = row b's context entries before the call."""
        B, M = input_ids.shape
        device = target_features.device
        slots = self.cache.get_seq_length()
        positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(M, device=device)[None]
        self._add_context(target_features, positions, torch.zeros(B, 1, 0, slots + M, dtype=torch.bool,
                                                                   device=device), self.cache)
        keep_row_positions(self.cache, lengths, [torch.arange(c, device=device) for c in counts], base=slots)

    @torch.no_grad()
    def propose(self, roots: list[int], lengths: list[int], depths: list[int]) -> list[DraftTree]:
        """One chain per row, rooted at roots[b] (sequence position lengths[b]), at most min(depths[b], self.depth)
        deep."""
        device = self.draft.fc.weight.device
        bs, slots = self.draft.block_size, self.cache.get_seq_length()
        length = torch.tensor(lengths, device=device)
        ids = self.draft.block_ids(torch.tensor(roots, device=device))
        positions = length[:, None] + torch.arange(bs, device=device)[None]
        context = prefix_mask(length, slots)[:, None, None, :].expand(-1, 1, bs, slots)
        mask = torch.cat([context, torch.ones(len(roots), 1, bs, bs, dtype=torch.bool, device=device)], dim=3)
        empty = torch.zeros(len(roots), 0, self.draft.config.hidden_size, dtype=self.dtype, device=device)
        hidden = self.draft(ids, empty, positions, mask, cache=self.cache)
        truncate(self.cache, slots)  # drop the blocks' keys and values
        depths = [max(0, min(d, self.depth)) for d in depths]
        chains = self.draft.compute_logits(hidden[:, 1:max(depths) + 1]).argmax(-1).tolist()  # [B, max depth]
        return [DraftTree.root_only(r, device).with_chain(c[:d]) for r, c, d in zip(roots, chains, depths)]
