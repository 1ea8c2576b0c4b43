"""The draft side of a batch-size-1 speculative step: keep the draft's KV cache on the accepted prefix and
propose trees (the expansion itself is `expansion.TreeExpander`'s, here the case B = 1).

Convention (EAGLE, see `expansion.py`): draft position t takes token x_{t+1} and the target feature f_t and
predicts x_{t+2}. With P tokens in the target's cache, the draft cache holds P entries (positions 0..P-1) and
its last output predicts the children of the root x_P.
"""

from __future__ import annotations

import torch

from eaglespec.decoding.cache import new_cache
from eaglespec.decoding.expansion import TreeExpander
from eaglespec.decoding.tree import DraftTree, TreeConfig


class Drafter:
    """Runs an EAGLE draft head for one sequence (batch size 1) and proposes `DraftTree`s."""

    def __init__(self, draft, tree: TreeConfig):
        self.draft = draft
        self.expander = TreeExpander(draft, tree)  # checks the tree settings against this draft
        self.reset()

    def reset(self) -> None:
        self.cache = new_cache()
        self.length = 0  # draft cache entries = tokens in the target's cache
        self.last_hidden: torch.Tensor | None = None  # [H]: draft output at position length - 1

    @property
    def depth(self) -> int:
        return self.expander.depth

    @property
    def top_k(self) -> int:
        return self.expander.top_k

    @property
    def dtype(self) -> torch.dtype:
        return next(self.draft.parameters()).dtype

    @torch.no_grad()
    def catch_up(self, input_ids: torch.Tensor, target_features: torch.Tensor) -> None:
        """Append accepted tokens: input_ids [1, T] = x_{t+1}, target_features [1, T, F] = f_t of the target."""
        T = input_ids.shape[1]
        hidden = self.draft.project_target_features(target_features.to(self.dtype))
        positions = torch.arange(self.length, self.length + T, device=input_ids.device)[None]
        out = self.draft(input_ids, hidden, position_ids=positions, cache=self.cache)  # causal over cache + T
        self.length += T
        self.last_hidden = out[0, -1]

    def propose(self, root_token: int, max_depth: int) -> DraftTree:
        """A draft tree rooted at `root_token` (sequence position self.length), at most `max_depth` deep."""
        lengths = torch.tensor([self.length], device=self.last_hidden.device)
        return self.expander.propose(self.cache, self.last_hidden[None], lengths, [root_token], [max_depth])[0]
