"""The draft side of a speculative step: keep the draft's KV cache on the accepted prefix and expand trees.

Convention (EAGLE): draft position t takes token x_{t+1} and the target feature f_t and predicts x_{t+2}.
With P tokens in the target's cache, the draft cache holds P entries (positions 0..P-1) and its last output
predicts the children of the root x_P. A tree node at depth d (token at sequence position P + d) is fed to
the draft at position P + d - 1 with its parent's draft output as hidden state (EAGLE-1: the predicted
feature; EAGLE-3: the pre-norm hidden). Expansion entries are cropped away afterwards, so the draft cache
only ever holds target-feature-conditioned entries for accepted tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eaglespec.decoding.cache import new_cache, truncate
from eaglespec.decoding.tree import (
    MC_SIM_7B_63,
    DraftTree,
    StaticTreeSpec,
    TreeConfig,
    chain_paths,
    dynamic_capacity,
    select_dynamic_nodes,
)


class Drafter:
    """Runs an EAGLE draft head for one sequence (batch size 1) and proposes `DraftTree`s."""

    def __init__(self, draft, tree: TreeConfig):
        self.draft = draft
        self.tree = tree
        self.method = draft.config.method
        draft_vocab = draft.config.draft_vocab_size
        self.depth = tree.resolved_depth(self.method)
        self.top_k = min(tree.top_k, draft_vocab)  # documented clamp: no more proposals than draft tokens
        self.total_tokens = tree.total_tokens
        self._static: StaticTreeSpec | None = None
        self._skeletons: dict[int, DraftTree] = {}  # static tree depth -> tree buffers (tokens filled per step)
        if tree.kind == "dynamic":
            capacity = dynamic_capacity(self.top_k, self.depth)
            if self.total_tokens - 1 > capacity:
                raise ValueError(
                    f"total_tokens={self.total_tokens} needs {self.total_tokens - 1} draft nodes, but depth "
                    f"{self.depth} with top_k {self.top_k} produces at most {capacity} (top_k + (depth-1)*top_k^2); "
                    f"lower total_tokens to <= {capacity + 1} or raise depth / top_k"
                )
        else:
            paths = tree.paths or (MC_SIM_7B_63 if tree.kind == "static" else chain_paths(self.depth))
            self._static = StaticTreeSpec.from_paths(paths)
            self.depth = len(self._static.level_parent)
            if self._static.max_rank >= draft_vocab:
                raise ValueError(f"static tree uses rank {self._static.max_rank}, the draft vocabulary has "
                                 f"only {draft_vocab} tokens")
        self.reset()

    def reset(self) -> None:
        self.cache = new_cache()
        self.length = 0  # draft cache entries = tokens in the target's cache
        self.last_hidden: torch.Tensor | None = None  # [H]: draft output at position length - 1

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

    @torch.no_grad()
    def propose(self, root_token: int, max_depth: int) -> DraftTree:
        """A draft tree rooted at `root_token` (sequence position self.length), at most `max_depth` deep."""
        depth = min(self.depth, max_depth)
        root = torch.tensor([root_token], device=self.last_hidden.device)
        if depth == 0:
            return DraftTree.from_parents(root, torch.tensor([-1], device=root.device))
        try:
            if self._static is not None:
                return self._propose_static(root, depth)
            return self._propose_dynamic(root, depth)
        finally:
            truncate(self.cache, self.length)  # drop the expansion entries

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """draft hidden [m, H] -> log-probs over the draft vocabulary [m, Vd] (float32)."""
        return F.log_softmax(self.draft.compute_logits(hidden).float(), dim=-1)

    def _expand(self, tokens: torch.Tensor, hidden: torch.Tensor, ancestors: torch.Tensor, depth: int):
        """Feed m nodes of depth `depth` (tokens [m], parent outputs hidden [m, H], ancestors [m, E] over the
        E expansion entries already in the cache) -> (outputs [m, H], log-probs [m, Vd])."""
        m, device = tokens.shape[0], tokens.device
        mask = torch.cat([
            torch.ones(m, self.length, dtype=torch.bool, device=device),  # the accepted prefix
            ancestors,  # earlier expansion entries: the node's ancestors only
            torch.eye(m, dtype=torch.bool, device=device),  # itself
        ], dim=1)
        positions = torch.full((1, m), self.length + depth - 1, device=device)
        out = self.draft(tokens[None], hidden[None], position_ids=positions, attention_mask=mask[None, None],
                         cache=self.cache)[0]
        return out, self._log_probs(out)

    def _propose_dynamic(self, root: torch.Tensor, depth: int) -> DraftTree:
        """EAGLE-2: expand the top_k frontier by cumulative log-prob, then keep the best total_tokens - 1."""
        k, device = self.top_k, root.device
        top = torch.topk(self._log_probs(self.last_hidden[None])[0], k)
        scores, tokens = [top.values], [self.draft.draft_to_target_ids(top.indices)]
        parents = [torch.full((k,), -1, device=device)]
        frontier = torch.arange(k, device=device)  # candidate ids of the frontier nodes
        f_scores, f_tokens, f_hidden = top.values, tokens[0], self.last_hidden.expand(k, -1)
        ancestors = torch.zeros(k, 0, dtype=torch.bool, device=device)
        num_candidates = k
        for d in range(1, depth):
            out, logp = self._expand(f_tokens, f_hidden, ancestors, d)
            ancestors = torch.cat([ancestors, torch.eye(k, dtype=torch.bool, device=device)], dim=1)
            top = torch.topk(logp, k, dim=-1)  # [k, k]
            child_scores = (f_scores[:, None] + top.values).flatten()  # [k * k]
            child_tokens = self.draft.draft_to_target_ids(top.indices).flatten()
            scores.append(child_scores)
            tokens.append(child_tokens)
            parents.append(frontier.repeat_interleave(k))
            best = torch.topk(child_scores, k).indices  # the next frontier
            rows = best // k
            frontier = num_candidates + best
            f_scores, f_tokens, f_hidden, ancestors = child_scores[best], child_tokens[best], out[rows], ancestors[rows]
            num_candidates += k * k
        num_nodes = min(self.total_tokens - 1, dynamic_capacity(k, depth))
        tree = select_dynamic_nodes(torch.cat(scores), torch.cat(parents), torch.cat(tokens), num_nodes)
        tree.tokens[0] = root[0]
        return tree

    def _static_skeleton(self, depth: int) -> tuple[StaticTreeSpec, DraftTree]:
        """The static tree cut at `depth` and its buffers (mask, depths, parents), built once per depth."""
        spec = self._static.truncated(depth)
        if depth not in self._skeletons:
            parents = spec.parents.to(self.last_hidden.device)
            self._skeletons[depth] = DraftTree.from_parents(torch.zeros_like(parents), parents)
        return spec, self._skeletons[depth]

    def _propose_static(self, root: torch.Tensor, depth: int) -> DraftTree:
        """Static / chain tree: the node with rank path (r_1..r_d) gets the r_d-th proposal of its parent."""
        spec, skeleton = self._static_skeleton(depth)
        device = root.device
        logp = self._log_probs(self.last_hidden[None])  # [1, Vd]: the root's proposals
        hidden = self.last_hidden[None]
        ancestors = torch.zeros(1, 0, dtype=torch.bool, device=device)
        levels = [root]
        for d in range(depth):
            parent_rows = spec.level_parent[d].to(device)
            ranks = spec.level_rank[d].to(device)
            proposals = torch.topk(logp, int(ranks.max()) + 1, dim=-1).indices  # [n_parent, max rank + 1]
            level_tokens = self.draft.draft_to_target_ids(proposals[parent_rows, ranks])
            levels.append(level_tokens)
            if d + 1 < depth:
                hidden, ancestors = hidden[parent_rows], ancestors[parent_rows]
                hidden, logp = self._expand(level_tokens, hidden, ancestors, d + 1)
                ancestors = torch.cat([ancestors, torch.eye(len(level_tokens), dtype=torch.bool, device=device)], 1)
        return DraftTree(tokens=torch.cat(levels), parents=skeleton.parents, depths=skeleton.depths,
                         mask=skeleton.mask)
