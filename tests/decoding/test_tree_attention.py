"""Acceptance 2: one tree forward gives every node the logits of its root-to-node path run alone."""

from __future__ import annotations

import pytest
import torch
from fixtures import tiny_model

from eaglespec.decoding.cache import new_cache
from eaglespec.decoding.tree import DraftTree
from eaglespec.models import TargetModel


def _random_tree(num_nodes: int, vocab: int, seed: int) -> DraftTree:
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, num_nodes)])
    return DraftTree.from_parents(torch.randint(3, vocab, (num_nodes,), generator=g), parents)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "phi3", "qwen3_moe", "mixtral"])
def test_tree_forward_equals_each_path_alone(arch):
    model = tiny_model(arch)
    target = TargetModel(model)
    prompt = torch.randint(3, target.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    tree = _random_tree(14, target.vocab_size, seed=2)
    assert tree.depth >= 3
    cache = new_cache()
    target(prompt, cache=cache)
    n = prompt.shape[1]
    mask = torch.cat([torch.ones(tree.size, n, dtype=torch.bool), tree.mask], 1)[None, None]
    logits = target(tree.tokens[None], position_ids=(tree.depths + n)[None], attention_mask=mask,
                    cache=cache).logits[0]
    for node in range(tree.size):
        path = tree.mask[node].nonzero().squeeze(1)
        alone = model(torch.cat([prompt[0], tree.tokens[path]])[None]).logits[0, -1]
        torch.testing.assert_close(logits[node], alone, atol=1e-4, rtol=0)
