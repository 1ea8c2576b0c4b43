"""The draft side of a batch-size-1 speculative step for a block drafter (DFlash): one draft forward proposes a
whole chain.

Same contract as `drafter.Drafter`: `catch_up(x_{t+1}, f_t)` appends accepted positions, `propose(root)` returns a
`DraftTree` rooted at the last accepted token, which sits at sequence position `length`. Here the draft's cache
holds the keys and values of the context (the target features f_0..f_{P-1}, one per position); the features
`catch_up` receives wait until the next `propose`, which runs them and the block [root, MASK, ...] (positions
P..P+block_size-1) through the draft in one forward and then drops the block's own keys and values again, so the
cache stays the context alone. Slot k of the block predicts the token at position P + k: its argmax is the chain.

The block always runs whole, as trained; `depth` (the tree's depth: `--depth`, or the one `tune` chose) keeps the
first `depth` slots (default all block_size - 1), and only their logits are computed. llama.cpp instead runs a
block of n_max + 1 slots, so below the full block its chain can differ from ours.
"""

from __future__ import annotations

import torch

from eaglespec.decoding.cache import new_cache, truncate
from eaglespec.decoding.tree import DraftTree
from eaglespec.models.dflash import block_attention_mask


def block_depth(block_size: int, depth: int | None) -> int:
    """The chain length a DFlash draft proposes: `depth`, or the whole block (block_size - 1) when None."""
    if depth is None:
        return block_size - 1
    if not 1 <= depth <= block_size - 1:
        raise ValueError(f"depth {depth} does not fit the dflash draft's block of {block_size}: it drafts 1 to "
                         f"{block_size - 1} tokens")
    return depth


class BlockDrafter:
    """Runs a DFlash draft for one sequence (batch size 1) and proposes chains of `depth` tokens (default
    block_size - 1)."""

    def __init__(self, draft, depth: int | None = None):
        self.draft = draft
        self.depth = block_depth(draft.block_size, depth)  # the chain it proposes (the session's tree depth)
        self.reset()

    def reset(self) -> None:
        self.cache = new_cache()
        self.length = 0  # context positions known: cached + pending
        self.pending: torch.Tensor | None = None  # [1, C, H] projected features not yet in the cache

    @property
    def top_k(self) -> int:
        return 1

    @property
    def dtype(self) -> torch.dtype:
        return next(self.draft.parameters()).dtype

    @torch.no_grad()
    def catch_up(self, input_ids: torch.Tensor, target_features: torch.Tensor) -> None:
        """Append accepted positions: target_features [1, T, F] = f_t (input_ids, x_{t+1}, are not needed: the
        block reads only the root's token)."""
        ctx = self.draft.project_target_features(target_features.to(self.dtype))
        self.pending = ctx if self.pending is None else torch.cat((self.pending, ctx), dim=1)
        self.length += target_features.shape[1]

    @torch.no_grad()
    def propose(self, root_token: int, max_depth: int) -> DraftTree:
        """A chain of at most min(self.depth, max_depth) tokens below `root_token` (position self.length)."""
        device = self.draft.fc.weight.device
        tree = DraftTree.root_only(root_token, device)
        kept = min(self.depth, max_depth)
        if kept < 1:
            return tree
        return tree.with_chain(self.block_logits(root_token, kept).argmax(-1).tolist())

    def block_logits(self, root_token: int, depth: int) -> torch.Tensor:
        """[depth, V]: the draft's logits for positions length + 1 .. length + depth (the whole block runs)."""
        device = self.draft.fc.weight.device
        past = self.length - (0 if self.pending is None else self.pending.shape[1])
        ctx = self.pending if self.pending is not None else torch.zeros(1, 0, self.draft.config.hidden_size,
                                                                        dtype=self.dtype, device=device)
        anchors = torch.tensor([self.length], device=device)
        ids = self.draft.block_ids(torch.tensor([root_token], device=device))
        positions = block_positions(past, self.length, self.draft.block_size, device)
        mask = block_attention_mask(anchors, self.draft.block_size, ctx.shape[1], past)
        hidden = self.draft(ids, ctx, positions, mask, cache=self.cache)
        truncate(self.cache, self.length)  # keep the context's keys and values, drop the block's
        self.pending = None
        return self.draft.compute_logits(hidden[0, 1:depth + 1])


def block_positions(past: int, anchor: int, block_size: int, device: torch.device) -> torch.Tensor:
    """[1, C + block_size]: the new context's positions past..anchor - 1, then the block's anchor..anchor + bs - 1."""
    return torch.arange(past, anchor + block_size, device=device)[None]
