"""Draft trees: the data structure, the tree specs (dynamic EAGLE-2, static rank paths, chain) and the
pure-tensor selection steps. Model calls live in `drafter.py`.

Glossary: node 0 is the root (the last token the target produced, not yet in the target's cache); every other
node is a draft proposal. depth(root) = 0; a node at depth d sits at sequence position seq_len + d. Nodes are
stored parents-before-children and, among siblings, best-ranked first (the acceptance walk relies on both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TREE_KINDS = ("dynamic", "static", "chain")

# EAGLE-1's default static tree "mc_sim_7b_63" as rank paths: [0, 1] = the 2nd-ranked child of the top-1 child.
# 25 nodes: depths 1-5 hold 4 / 8 / 8 / 3 / 2 nodes.
MC_SIM_7B_63: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1),
)

# Reference EAGLE-2 defaults (EAGLE_NOTES section 3): top-k 10, 60 verified tokens, depth 7 (EAGLE-3) / 5 (EAGLE-1).
DEFAULT_TOP_K = 10
DEFAULT_TOTAL_TOKENS = 60
DEFAULT_DEPTH = {"eagle3": 7, "eagle1": 5}


@dataclass
class DraftTree:
    """A tree of T nodes (root included) ready for one target forward.

    tokens  [T] target token ids (tokens[0] = root)
    parents [T] index of the parent node (-1 for the root)
    depths  [T] 0 for the root
    mask    [T, T] bool, mask[i, j] = j is i or an ancestor of i (tree attention)
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_parents(cls, tokens: torch.Tensor, parents: torch.Tensor) -> "DraftTree":
        """Build depths and the ancestor mask from parent pointers (parents[i] < i), one loop step per depth."""
        T = tokens.shape[0]
        idx = torch.arange(T, device=tokens.device)
        mask = torch.eye(T, dtype=torch.bool, device=tokens.device)
        depths = torch.zeros(T, dtype=torch.long, device=tokens.device)
        anc = parents.clone()  # per node: the next ancestor to mark (-1 once the root was marked)
        active = anc >= 0
        while bool(active.any()):
            mask[idx[active], anc[active]] = True
            depths += active.long()
            anc = torch.where(active, parents[anc.clamp(min=0)], anc)
            active = anc >= 0
        return cls(tokens=tokens, parents=parents, depths=depths, mask=mask)

    @classmethod
    def root_only(cls, root: int, device: torch.device) -> "DraftTree":
        """A tree with no draft node: verifying it is one vanilla decoding step."""
        return cls.from_parents(torch.tensor([root], device=device), torch.tensor([-1], device=device))

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def with_chain(self, chain: list[int]) -> "DraftTree":
        """This tree with `chain` (the tokens to follow the root, in order) merged in: the chain walks down the
        existing nodes while they spell it, and the rest hangs below the last one as new nodes (appended, so
        parents still come before children; siblings stay distinct)."""
        tokens, parents = self.tokens.tolist(), self.parents.tolist()
        node, matched = 0, 0
        for token in chain:
            child = next((c for c in range(node + 1, len(tokens)) if parents[c] == node and tokens[c] == token), None)
            if child is None:
                break
            node, matched = child, matched + 1
        rest = chain[matched:]
        if not rest:
            return self
        first = len(tokens)
        new_parents = [node] + list(range(first, first + len(rest) - 1))
        device = self.tokens.device
        return DraftTree.from_parents(torch.tensor(tokens + rest, device=device),
                                      torch.tensor(parents + new_parents, device=device))

    @property
    def depth(self) -> int:
        return int(self.depths.max())


@dataclass(frozen=True)
class TreeConfig:
    """How to draft. kind: dynamic (EAGLE-2), static (rank paths, default MC_SIM_7B_63) or chain (depth only).

    dynamic: each of `depth` steps keeps the `top_k` best nodes by cumulative log-prob as the next frontier;
    finally the best `total_tokens - 1` nodes are verified (plus the root). top_k is clamped to the draft
    vocabulary; total_tokens - 1 larger than what depth and top_k can produce, top_k + (depth-1) * top_k**2,
    is an error. depth None = the method's reference default (EAGLE-3: 7, EAGLE-1: 5).
    """

    kind: str = "dynamic"
    top_k: int = DEFAULT_TOP_K
    depth: int | None = None
    total_tokens: int = DEFAULT_TOTAL_TOKENS
    paths: tuple[tuple[int, ...], ...] | None = None  # static only; default MC_SIM_7B_63
    lookup: int = 0  # at most this many n-gram lookup tokens merged into each tree (`decoding.lookup`); 0 = off

    def __post_init__(self) -> None:
        if self.kind not in TREE_KINDS:
            raise ValueError(f"tree kind must be one of {TREE_KINDS}, got {self.kind!r}")
        if self.depth is not None and self.depth < 0:
            raise ValueError(f"tree depth must be >= 0, got {self.depth}")
        if self.top_k < 1:
            raise ValueError(f"tree top_k must be >= 1, got {self.top_k}")
        if self.total_tokens < 1:
            raise ValueError(f"total_tokens must be >= 1 (the root), got {self.total_tokens}")
        if self.lookup < 0:
            raise ValueError(f"lookup must be >= 0 (tokens; 0 = off), got {self.lookup}")
        if self.paths is not None and self.kind != "static":
            raise ValueError("tree paths apply to kind='static' only")

    @classmethod
    def merged(cls, tuned: dict | None, explicit: dict) -> "TreeConfig":
        """A tuned tree (`eaglespec tune`) overridden by explicitly given fields; an explicit other kind
        replaces the tuned tree entirely (a tuned dynamic top_k means nothing to a chain)."""
        tuned = dict(tuned or {})
        if "kind" in explicit and explicit["kind"] != tuned.get("kind", explicit["kind"]):
            tuned = {}
        return cls(**{**tuned, **{k: v for k, v in explicit.items() if v is not None}})

    def summary(self, method: str) -> dict:
        """The fields that define this tree for `method` (depth resolved), as stored by `eaglespec tune`."""
        lookup = {"lookup": self.lookup} if self.lookup else {}
        if self.kind == "chain":
            return {"kind": "chain", "depth": self.resolved_depth(method), **lookup}
        if self.kind == "static":
            paths = {} if self.paths is None else {"paths": [list(p) for p in self.paths]}
            return {"kind": "static", **paths, **lookup}
        return {"kind": "dynamic", "depth": self.resolved_depth(method), "top_k": self.top_k,
                "total_tokens": self.total_tokens, **lookup}

    def resolved_depth(self, method: str) -> int:
        return DEFAULT_DEPTH[method] if self.depth is None else self.depth


def dynamic_capacity(top_k: int, depth: int) -> int:
    """Draft candidates a dynamic expansion produces: top_k at depth 1, top_k * top_k at every later depth."""
    return 0 if depth == 0 else top_k + (depth - 1) * top_k * top_k


@dataclass
class StaticTreeSpec:
    """A static tree as per-depth gather indices (built once, cached by the drafter).

    level_parent[d] [n_d]: for the nodes at depth d+1, the row of their parent among depth-d nodes
                           (depth 0 = the root row);
    level_rank[d]   [n_d]: their rank among the parent's draft proposals;
    parents         [T]:   parent node ids in the final tree order (root = node 0).
    """

    level_parent: list[torch.Tensor]
    level_rank: list[torch.Tensor]
    parents: torch.Tensor
    max_rank: int = field(default=0)

    @classmethod
    def from_paths(cls, paths: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> "StaticTreeSpec":
        paths = [tuple(int(r) for r in p) for p in paths]
        if not paths:
            raise ValueError("static tree: give at least one rank path")
        if any(r < 0 for p in paths for r in p) or any(len(p) == 0 for p in paths):
            raise ValueError("static tree: rank paths must be non-empty lists of ranks >= 0")
        if len(set(paths)) != len(paths):
            raise ValueError("static tree: duplicate rank paths")
        ordered = sorted(paths, key=lambda p: (len(p), p))  # by depth, siblings by rank
        node_of = {(): 0, **{p: i + 1 for i, p in enumerate(ordered)}}
        missing = [p for p in ordered if p[:-1] not in node_of]
        if missing:
            raise ValueError(f"static tree: paths {missing[:3]} have no parent path in the list")
        parents = torch.tensor([-1] + [node_of[p[:-1]] for p in ordered])
        level_parent, level_rank = [], []
        for d in range(1, max(len(p) for p in ordered) + 1):
            prev = [p for p in ordered if len(p) == d - 1] if d > 1 else [()]
            row_of = {p: i for i, p in enumerate(prev)}
            level = [p for p in ordered if len(p) == d]
            level_parent.append(torch.tensor([row_of[p[:-1]] for p in level]))
            level_rank.append(torch.tensor([p[-1] for p in level]))
        return cls(level_parent, level_rank, parents, max(r for p in paths for r in p))

    def truncated(self, depth: int) -> "StaticTreeSpec":
        """The same tree without nodes deeper than `depth` (still parents-before-children)."""
        n = 1 + sum(int(x.numel()) for x in self.level_parent[:depth])
        ranks = [int(r.max()) for r in self.level_rank[:depth]]
        return StaticTreeSpec(self.level_parent[:depth], self.level_rank[:depth], self.parents[:n],
                              max(ranks) if ranks else 0)


def chain_paths(depth: int) -> tuple[tuple[int, ...], ...]:
    """A chain of `depth` top-1 proposals: (0,), (0, 0), ..."""
    return tuple((0,) * d for d in range(1, depth + 1))


def select_dynamic_nodes(
    scores: torch.Tensor,  # [C] cumulative log-probs of all candidates, in creation order
    cand_parents: torch.Tensor,  # [C] parent candidate index (-1 = root)
    cand_tokens: torch.Tensor,  # [C] target token ids
    num_nodes: int,
) -> DraftTree:
    """EAGLE-2 rerank: keep the best `num_nodes` candidates by cumulative log-prob, plus the root (token -1
    placeholder, filled by the caller).

    A child never scores above its parent (log-probs <= 0) and a stable sort puts the parent (created
    earlier) first on ties, so the kept set is always a connected subtree.
    """
    order = torch.sort(-scores, stable=True).indices[:num_nodes]
    keep = torch.sort(order).values  # creation order = parents before children, siblings by rank
    node_of = torch.full((scores.shape[0] + 1,), -1, dtype=torch.long, device=scores.device)
    node_of[keep] = torch.arange(1, num_nodes + 1, device=scores.device)
    node_of[-1] = 0  # cand_parents == -1 (the root) indexes the last slot
    parents = torch.cat([torch.tensor([-1], device=scores.device), node_of[cand_parents[keep]]])
    assert bool((parents[1:] >= 0).all()), "dynamic tree rerank produced a disconnected node"
    tokens = torch.cat([torch.full((1,), -1, dtype=torch.long, device=scores.device), cand_tokens[keep]])
    return DraftTree.from_parents(tokens, parents)
