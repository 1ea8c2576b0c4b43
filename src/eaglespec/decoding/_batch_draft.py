"""The draft side of a batched speculative step: one draft forward per tree depth for all rows.

Same conventions as `drafter.py` (draft position t takes x_{t+1} and f_t; with P_b tokens in row b's target
cache the draft cache holds P_b entries and its last output predicts the root's children), laid out as the
padded batch caches of `_batch_cache.py`: row b's draft entries are slots [0, P_b), the rest are holes.
Expansion entries are appended at slots [S, S + E) for every row and cropped away after each proposal.

Row b may need a shallower tree than the others (its context is nearly full): the batch expands to the
deepest row's depth and each row keeps only the candidates a batch-size-1 drafter with its depth would have
built (dynamic: the first `dynamic_capacity(top_k, depth_b)` candidates, which are created depth by depth;
static: the tree cut at depth_b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import append_row, keep_row_positions, prefix_mask, select_rows
from eaglespec.decoding.cache import new_cache, truncate
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.tree import DraftTree, dynamic_capacity, select_dynamic_nodes


class BatchDrafter:
    """Runs an EAGLE draft head for B sequences at once and proposes one `DraftTree` per row.

    The tree settings (kind, depth, top_k, total_tokens, static spec) are those of a batch-size-1 `Drafter`,
    which has already validated them.
    """

    def __init__(self, settings: Drafter):
        self.draft = settings.draft
        self.depth = settings.depth
        self.top_k = settings.top_k
        self.total_tokens = settings.total_tokens
        self.static = settings._static  # StaticTreeSpec, or None for dynamic trees
        self._skeletons: dict[int, DraftTree] = {}
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

    @torch.no_grad()
    def propose(self, roots: list[int], lengths: list[int], depths: list[int]) -> list[DraftTree]:
        """One tree per row, rooted at roots[b] (sequence position lengths[b]), at most depths[b] deep."""
        device = self.last_hidden.device
        depth = min(self.depth, max(depths))
        if depth == 0:
            return [DraftTree.root_only(r, device) for r in roots]
        slots = self.cache.get_seq_length()
        length = torch.tensor(lengths, device=device)
        try:
            if self.static is not None:
                tokens = self._expand_static(length, slots, depth)
                return [self._static_tree(tokens[b], r, min(d, depth)) for b, (r, d) in enumerate(zip(roots, depths))]
            scores, parents, tokens = self._expand_dynamic(length, slots, depth)
            return [self._dynamic_tree(scores[b], parents[b], tokens[b], r, min(d, depth))
                    for b, (r, d) in enumerate(zip(roots, depths))]
        finally:
            truncate(self.cache, slots)  # drop the expansion entries

    # ------------------------------------------------------------------------------------------------
    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """draft hidden [..., H] -> log-probs over the draft vocabulary [..., Vd] (float32)."""
        return F.log_softmax(self.draft.compute_logits(hidden).float(), dim=-1)

    def _expand(self, tokens: torch.Tensor, hidden: torch.Tensor, ancestors: torch.Tensor, depth: int,
                length: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed m nodes per row at tree depth `depth`: tokens [B, m], parent outputs hidden [B, m, H], ancestors
        [B, m, E] over the E expansion entries already cached -> (outputs [B, m, H], log-probs [B, m, Vd])."""
        B, m = tokens.shape
        device = tokens.device
        mask = torch.cat([
            prefix_mask(length, slots)[:, None, :].expand(B, m, slots),  # each row's accepted prefix
            ancestors,  # earlier expansion entries: the node's ancestors only
            torch.eye(m, dtype=torch.bool, device=device).expand(B, m, m),  # itself
        ], dim=2)
        positions = (length + depth - 1)[:, None].expand(B, m)
        out = self.draft(tokens, hidden, position_ids=positions, attention_mask=mask[:, None], cache=self.cache)
        return out, self._log_probs(out)

    def _expand_dynamic(self, length: torch.Tensor, slots: int, depth: int):
        """EAGLE-2 expansion for every row -> candidate (scores, parents, target tokens), each [B, C]."""
        k, device = self.top_k, length.device
        B, H = self.last_hidden.shape
        top = torch.topk(self._log_probs(self.last_hidden), k, dim=-1)  # [B, k]
        scores, tokens = [top.values], [self.draft.draft_to_target_ids(top.indices)]
        parents = [torch.full((B, k), -1, device=device)]
        frontier = torch.arange(k, device=device).expand(B, k)  # candidate ids of the frontier nodes
        f_scores, f_tokens, f_hidden = top.values, tokens[0], self.last_hidden[:, None].expand(B, k, H)
        ancestors = torch.zeros(B, k, 0, dtype=torch.bool, device=device)
        eye = torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)
        num_candidates = k
        for d in range(1, depth):
            out, logp = self._expand(f_tokens, f_hidden, ancestors, d, length, slots)
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

    def _dynamic_tree(self, scores, parents, tokens, root: int, depth: int) -> DraftTree:
        """Row rerank: the best total_tokens - 1 among the candidates of depth <= `depth`."""
        if depth == 0:
            return DraftTree.root_only(root, scores.device)
        capacity = dynamic_capacity(self.top_k, depth)  # candidates are created depth by depth
        num_nodes = min(self.total_tokens - 1, capacity)
        tree = select_dynamic_nodes(scores[:capacity], parents[:capacity], tokens[:capacity], num_nodes)
        tree.tokens[0] = root
        return tree

    def _expand_static(self, length: torch.Tensor, slots: int, depth: int) -> torch.Tensor:
        """Static / chain tree tokens for every row [B, T] (root slot 0 left for the caller)."""
        spec = self.static.truncated(depth)
        device = length.device
        B = length.shape[0]
        logp = self._log_probs(self.last_hidden)[:, None]  # [B, 1, Vd]: the root's proposals
        hidden = self.last_hidden[:, None]  # [B, 1, H]
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
                hidden, logp = self._expand(level_tokens, hidden, ancestors.expand(B, *ancestors.shape), d + 1,
                                            length, slots)
                ancestors = torch.cat([ancestors, torch.eye(n, dtype=torch.bool, device=device)], dim=1)
        return torch.cat(levels, dim=1)

    def _static_tree(self, tokens: torch.Tensor, root: int, depth: int) -> DraftTree:
        """Row b's static tree cut at `depth` (nodes are stored depth by depth, so it is a prefix)."""
        if depth == 0:
            return DraftTree.root_only(root, tokens.device)
        if depth not in self._skeletons:
            parents = self.static.truncated(depth).parents.to(tokens.device)
            self._skeletons[depth] = DraftTree.from_parents(torch.zeros_like(parents), parents)
        skeleton = self._skeletons[depth]
        row = tokens[: skeleton.size].clone()
        row[0] = root
        return DraftTree(tokens=row, parents=skeleton.parents, depths=skeleton.depths, mask=skeleton.mask)
