"""Draft-tree expansion over a batch axis: one draft forward per tree depth for B rows at once (B = 1 included).

Convention (EAGLE): draft position t takes token x_{t+1} and the target feature f_t and predicts x_{t+2}.
With P_b tokens in row b's target cache, the draft cache holds P_b entries (row b's slots [0, P_b), the rest
are holes; `_batch_cache.py`) and its last output predicts the children of the root x_{P_b}. A tree node at
depth d (token at sequence position P_b + d) is fed to the draft at position P_b + d - 1 with its parent's draft
output as hidden state (EAGLE-1: the predicted feature; EAGLE-3: the pre-norm hidden). Expansion entries are
appended at slots [S, S + E) for every row (S = the cache's slot count) and cropped away after each proposal,
so the draft cache only ever holds target-feature-conditioned entries for accepted tokens.

Row b may need a shallower tree than the others (its context is nearly full): the batch expands to the deepest
row's depth and each row keeps only the candidates a single row with its depth would have built (dynamic: the
first `dynamic_capacity(top_k, depth_b)` candidates, which are created depth by depth; static: the tree cut
at depth_b). The caches themselves belong to the callers: `drafter.Drafter` (one sequence) and
`_batch_draft.BatchDrafter` (a running batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import prefix_mask
from eaglespec.decoding.cache import truncate
from eaglespec.decoding.tree import (
    MC_SIM_7B_63,
    DraftTree,
    StaticTreeSpec,
    TreeConfig,
    chain_paths,
    dynamic_capacity,
    select_dynamic_nodes,
)


class TreeExpander:
    """A draft's tree settings (kind, depth, top_k, total_tokens, static spec), checked once, and the expansion
    of every row's tree (EAGLE-2 dynamic, or static / chain rank paths)."""

    def __init__(self, draft, tree: TreeConfig):
        self.draft = draft
        draft_vocab = draft.config.draft_vocab_size
        self.depth = tree.resolved_depth(draft.config.method)
        self.top_k = min(tree.top_k, draft_vocab)  # documented clamp: no more proposals than draft tokens
        self.total_tokens = tree.total_tokens
        self.static: StaticTreeSpec | None = None  # None: dynamic trees
        self._skeletons: dict[int, DraftTree] = {}  # static tree depth -> tree buffers (tokens filled per step)
        if tree.kind == "dynamic":
            self._check_dynamic_capacity()
        else:
            self.static = StaticTreeSpec.from_paths(tree.paths or (
                MC_SIM_7B_63 if tree.kind == "static" else chain_paths(self.depth)))
            self.depth = len(self.static.level_parent)
            if self.static.max_rank >= draft_vocab:
                raise ValueError(f"static tree uses rank {self.static.max_rank}, the draft vocabulary has "
                                 f"only {draft_vocab} tokens")

    def _check_dynamic_capacity(self) -> None:
        capacity = dynamic_capacity(self.top_k, self.depth)
        if self.total_tokens - 1 > capacity:
            raise ValueError(
                f"total_tokens={self.total_tokens} needs {self.total_tokens - 1} draft nodes, but depth "
                f"{self.depth} with top_k {self.top_k} produces at most {capacity} (top_k + (depth-1)*top_k^2); "
                f"lower total_tokens to <= {capacity + 1} or raise depth / top_k"
            )

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def propose(self, cache: DynamicCache, last_hidden: torch.Tensor, lengths: torch.Tensor, roots: list[int],
                depths: list[int]) -> list[DraftTree]:
        """One tree per row, rooted at roots[b] (sequence position lengths[b]), at most depths[b] deep.
        last_hidden [B, H]: each row's draft output at position lengths[b] - 1; lengths [B] (long)."""
        device = last_hidden.device
        depth = min(self.depth, max(depths))
        if depth == 0:
            return [DraftTree.root_only(r, device) for r in roots]
        slots = cache.get_seq_length()
        try:
            if self.static is not None:
                tokens = self._expand_static(cache, last_hidden, lengths, slots, depth)
                return [self._static_tree(tokens[b], r, min(d, depth)) for b, (r, d) in enumerate(zip(roots, depths))]
            scores, parents, tokens = self._expand_dynamic(cache, last_hidden, lengths, slots, depth)
            return [self._dynamic_tree(scores[b], parents[b], tokens[b], r, min(d, depth))
                    for b, (r, d) in enumerate(zip(roots, depths))]
        finally:
            truncate(cache, slots)  # drop the expansion entries

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """draft hidden [..., H] -> log-probs over the draft vocabulary [..., Vd] (float32)."""
        return F.log_softmax(self.draft.compute_logits(hidden).float(), dim=-1)

    def _expand(self, cache: DynamicCache, tokens: torch.Tensor, hidden: torch.Tensor, ancestors: torch.Tensor,
                depth: int, lengths: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed m nodes per row at tree depth `depth`: tokens [B, m], parent outputs hidden [B, m, H], ancestors
        [B, m, E] over the E expansion entries already cached -> (outputs [B, m, H], log-probs [B, m, Vd])."""
        B, m = tokens.shape
        mask = torch.cat([
            prefix_mask(lengths, slots)[:, None, :].expand(B, m, slots),  # each row's accepted prefix
            ancestors,  # earlier expansion entries: the node's ancestors only
            torch.eye(m, dtype=torch.bool, device=tokens.device).expand(B, m, m),  # itself
        ], dim=2)
        positions = (lengths + depth - 1)[:, None].expand(B, m)
        out = self.draft(tokens, hidden, position_ids=positions, attention_mask=mask[:, None], cache=cache)
        return out, self.log_probs(out)

    def _expand_dynamic(self, cache: DynamicCache, last_hidden: torch.Tensor, lengths: torch.Tensor, slots: int,
                        depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EAGLE-2: each depth expands the top_k frontier nodes to top_k children each and keeps the top_k
        children by cumulative log-prob as the next frontier -> candidate (scores, parents, target tokens),
        each [B, C] in creation order (C = dynamic_capacity(top_k, depth))."""
        k, device = self.top_k, lengths.device
        B, H = last_hidden.shape
        top = torch.topk(self.log_probs(last_hidden), k, dim=-1)  # [B, k]
        scores, tokens = [top.values], [self.draft.draft_to_target_ids(top.indices)]
        parents = [torch.full((B, k), -1, device=device)]
        frontier = torch.arange(k, device=device).expand(B, k)  # candidate ids of the frontier nodes
        f_scores, f_tokens, f_hidden = top.values, tokens[0], last_hidden[:, None].expand(B, k, H)
        ancestors = torch.zeros(B, k, 0, dtype=torch.bool, device=device)
        eye = torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)
        num_candidates = k
        for d in range(1, depth):
            out, logp = self._expand(cache, f_tokens, f_hidden, ancestors, d, lengths, slots)
            ancestors = torch.cat([ancestors, eye], dim=2)
            top = torch.topk(logp, k, dim=-1)  # [B, k, k]
            child_scores = (f_scores[..., None] + top.values).flatten(1)  # [B, k * k]
            child_tokens = self.draft.draft_to_target_ids(top.indices).flatten(1)
            scores.append(child_scores)
            tokens.append(child_tokens)
            parents.append(frontier.repeat_interleave(k, dim=1))
            best = torch.topk(child_scores, k, dim=-1).indices  # [B, k]: the next frontier
            rows = best // k
            frontier = num_candidates + best
            f_scores, f_tokens = child_scores.gather(1, best), child_tokens.gather(1, best)
            f_hidden = out.gather(1, rows[..., None].expand(B, k, H))
            ancestors = ancestors.gather(1, rows[..., None].expand(B, k, ancestors.shape[2]))
            num_candidates += k * k
        return torch.cat(scores, 1), torch.cat(parents, 1), torch.cat(tokens, 1)

    def _dynamic_tree(self, scores: torch.Tensor, parents: torch.Tensor, tokens: torch.Tensor, root: int,
                      depth: int) -> DraftTree:
        """Row rerank: the best total_tokens - 1 among the candidates of depth <= `depth`."""
        if depth == 0:
            return DraftTree.root_only(root, scores.device)
        capacity = dynamic_capacity(self.top_k, depth)  # candidates are created depth by depth
        num_nodes = min(self.total_tokens - 1, capacity)
        tree = select_dynamic_nodes(scores[:capacity], parents[:capacity], tokens[:capacity], num_nodes)
        tree.tokens[0] = root
        return tree

    def _expand_static(self, cache: DynamicCache, last_hidden: torch.Tensor, lengths: torch.Tensor, slots: int,
                       depth: int) -> torch.Tensor:
        """Static / chain tree tokens for every row [B, T] (root slot 0 left for the caller): the node with rank
        path (r_1..r_d) gets the r_d-th proposal of its parent."""
        spec = self.static.truncated(depth)
        device = lengths.device
        B = lengths.shape[0]
        logp = self.log_probs(last_hidden)[:, None]  # [B, 1, Vd]: the root's proposals
        hidden = last_hidden[:, None]  # [B, 1, H]
        ancestors = torch.zeros(1, 0, dtype=torch.bool, device=device)  # same tree shape in every row
        levels = [torch.zeros(B, 1, dtype=torch.long, device=device)]
        for d in range(depth):
            parent_rows = spec.level_parent[d].to(device)
            ranks = spec.level_rank[d].to(device)
            proposals = torch.topk(logp, int(ranks.max()) + 1, dim=-1).indices  # [B, n_parent, max rank + 1]
            level_tokens = self.draft.draft_to_target_ids(proposals[:, parent_rows, ranks])  # [B, n_d]
            levels.append(level_tokens)
            if d + 1 < depth:
                hidden, ancestors = hidden[:, parent_rows], ancestors[parent_rows]
                n = level_tokens.shape[1]
                hidden, logp = self._expand(cache, level_tokens, hidden, ancestors.expand(B, *ancestors.shape),
                                            d + 1, lengths, slots)
                ancestors = torch.cat([ancestors, torch.eye(n, dtype=torch.bool, device=device)], dim=1)
        return torch.cat(levels, dim=1)

    def _static_tree(self, tokens: torch.Tensor, root: int, depth: int) -> DraftTree:
        """A row's static tree cut at `depth` (nodes are stored depth by depth, so it is a prefix)."""
        if depth == 0:
            return DraftTree.root_only(root, tokens.device)
        if depth not in self._skeletons:
            parents = self.static.truncated(depth).parents.to(tokens.device)
            self._skeletons[depth] = DraftTree.from_parents(torch.zeros_like(parents), parents)
        skeleton = self._skeletons[depth]
        row = tokens[: skeleton.size].clone()
        row[0] = root
        return DraftTree(tokens=row, parents=skeleton.parents, depths=skeleton.depths, mask=skeleton.mask)
