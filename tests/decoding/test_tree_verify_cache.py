"""Hand-computed examples for tree buffers, acceptance and cache surgery."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from eaglespec.decoding.cache import keep_positions, new_cache
from eaglespec.decoding.sampling import SamplingConfig, greedy_token, target_probs
from eaglespec.decoding.tree import MC_SIM_7B_63, DraftTree, StaticTreeSpec, chain_paths, select_dynamic_nodes
from eaglespec.decoding.verify import verify_greedy


def _tree() -> DraftTree:
    #        0
    #      /   \
    #     1     2
    #    / \     \
    #   3   4     5
    return DraftTree.from_parents(torch.tensor([9, 10, 11, 12, 13, 14]), torch.tensor([-1, 0, 0, 1, 1, 2]))


def test_tree_buffers_by_hand():
    tree = _tree()
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2]
    assert tree.mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 1]]


def test_static_trees():
    spec = StaticTreeSpec.from_paths(MC_SIM_7B_63)
    tree = DraftTree.from_parents(torch.zeros(26, dtype=torch.long), spec.parents)
    assert [int((tree.depths == d).sum()) for d in range(1, 6)] == [4, 8, 8, 3, 2]
    assert [t.tolist() for t in spec.level_rank[:2]] == [[0, 1, 2, 3], [0, 1, 2, 0, 1, 0, 1, 0]]
    assert spec.level_parent[1].tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    chain = StaticTreeSpec.from_paths(chain_paths(4))
    assert chain.parents.tolist() == [-1, 0, 1, 2, 3]
    assert len(spec.truncated(2).parents) == 1 + 4 + 8


def test_dynamic_rerank_keeps_a_connected_subtree_on_ties():
    # candidates: depth 1 (a, b), then children of a (c, d); c ties its parent a (log-prob 0).
    scores = torch.tensor([-1.0, -2.0, -1.0, -3.0])
    parents = torch.tensor([-1, -1, 0, 0])
    tree = select_dynamic_nodes(scores, parents, torch.tensor([5, 6, 7, 8]), num_nodes=2)
    assert tree.parents.tolist() == [-1, 0, 1]  # a then its child c; never c without a
    assert tree.tokens[1:].tolist() == [5, 7]


def test_greedy_token_is_argmax_first_index_on_ties_in_every_dtype():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for _ in range(50):
            logits = torch.randint(0, 3, (8, 40), generator=g).to(dtype)  # many exact ties
            assert torch.equal(greedy_token(logits), logits.argmax(-1))
    assert greedy_token(torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], dtype=torch.bfloat16)).tolist() == [1, 0]


def test_greedy_acceptance_by_hand():
    tree = _tree()
    V = 16
    logits = torch.zeros(6, V)
    argmax = {0: 10, 1: 13, 2: 3, 3: 0, 4: 7, 5: 1}  # root -> 10 (node 1) -> 13 (node 4) -> bonus 7
    for node, token in argmax.items():
        logits[node, token] = 1.0
    result = verify_greedy(tree, logits)
    assert result.path.tolist() == [0, 1, 4] and result.bonus_token == 7 and result.accept_length == 2


def test_processors_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_k=3))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)


def test_keep_positions_packs_the_accepted_path():
    cache = new_cache()
    keys = torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1).expand(1, 2, 16, 3).contiguous()
    cache.update(keys, keys + 100, 0)
    cache.update(keys * 2, keys * 2 + 100, 1)
    keep_positions(cache, 10, torch.tensor([0, 2, 5]))
    assert cache.get_seq_length() == 13
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == list(range(10)) + [10, 12, 15]
    assert cache.layers[1].values[0, 1, -3:, 0].tolist() == [120, 124, 130]
    assert isinstance(cache, DynamicCache)
