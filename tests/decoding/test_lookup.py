"""N-gram lookup merged into the draft tree: the index, the merge, and that output stays the target's (greedy
token for token, sampling in distribution) while lookup tokens do get accepted."""

from __future__ import annotations

import pytest
import torch
from decoding_helpers import STORY_PROMPTS, count_tie_or_fail, greedy_reference
from fixtures import stories260k, stories260k_tokenizer
from test_lossless_sampling import VOCAB, build_logit_table, chi_square_p_value, exact_joint

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.decoding.tree import DraftTree
from eaglespec.models import TargetModel, build_draft


def test_continuation_of_the_longest_suffix_at_its_latest_occurrence():
    index = NgramIndex([1, 2, 3, 9, 9, 2, 3, 4, 5, 7, 2, 3])
    # suffix (2, 3) occurred at 1-2 and 5-6: the latest is followed by 4, 5, 7, 2, 3
    assert index.continuation(3) == [4, 5, 7]
    index.extend([4])  # suffix (2, 3, 4) now matches 5-7 (longer than (3, 4))
    assert index.continuation(10) == [5, 7, 2, 3, 4]
    index.extend([8])  # (4, 8) never occurred, and single tokens are not looked up
    assert index.continuation(5) == []


def test_continuation_in_a_loop_and_at_the_limits():
    index = NgramIndex([5, 6, 5, 6, 5])
    assert index.continuation(4) == [6, 5]  # the latest earlier (6, 5) is followed by 6, 5 (the suffix itself)
    assert index.continuation(0) == []
    assert NgramIndex([3]).continuation(4) == []
    assert NgramIndex([]).continuation(4) == []


def test_longer_matches_win_over_more_recent_shorter_ones():
    index = NgramIndex([1, 2, 3, 4, 10, 0, 3, 4, 11, 1, 2, 3, 4])
    assert index.continuation(1) == [10]  # (1, 2, 3, 4) at 0-3, although (3, 4) ended later at 7


def _tree(tokens, parents) -> DraftTree:
    return DraftTree.from_parents(torch.tensor(tokens), torch.tensor(parents))


def test_chain_shares_existing_nodes_and_hangs_the_rest_below():
    tree = _tree([0, 5, 6, 7, 8], [-1, 0, 0, 1, 1])  # root -> 5 -> (7, 8); root -> 6
    merged = tree.with_chain([5, 8, 9, 4])
    assert merged.tokens.tolist() == [0, 5, 6, 7, 8, 9, 4]
    assert merged.parents.tolist() == [-1, 0, 0, 1, 1, 4, 5]
    assert merged.depths.tolist() == [0, 1, 1, 2, 2, 3, 4]
    assert merged.mask[6].nonzero().flatten().tolist() == [0, 1, 4, 5, 6]  # root, 5, 8, 9, itself
    assert tree.with_chain([5, 7]) is tree  # already in the tree: nothing to add
    assert tree.with_chain([]) is tree
    new_branch = tree.with_chain([3, 3])
    assert new_branch.parents.tolist()[5:] == [0, 5] and new_branch.tokens.tolist()[5:] == [3, 3]


def test_merged_siblings_stay_distinct():
    tree = _tree([0, 5, 6], [-1, 0, 0])
    merged = tree.with_chain([6, 6, 6])
    for node in range(merged.size):
        children = merged.tokens[merged.parents == node].tolist()
        assert len(children) == len(set(children))


@pytest.fixture(scope="module")
def stories():
    model = stories260k()
    return model, TargetModel(model), stories260k_tokenizer()


@pytest.mark.parametrize("tree", [
    TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8, lookup=8),
    TreeConfig(kind="chain", depth=2, lookup=12),
    TreeConfig(kind="static", lookup=5),
])
def test_greedy_with_lookup_equals_hf_and_lookup_tokens_are_accepted(stories, tree):
    # An untrained draft proposes little the target accepts; the stories repeat names and phrases, so the
    # lookup's tokens make up most of what is accepted, and the output must still be the target's own.
    model, target, tok = stories
    draft = build_draft(target, "eagle3", draft_vocab_size=256, seed=3)
    gen = SpeculativeGenerator(target, draft, tokenizer=tok, tree=tree)
    plain = SpeculativeGenerator(target, draft, tokenizer=tok, tree=TreeConfig(**{**tree.__dict__, "lookup": 0}))
    lookup_tokens = forwards = plain_forwards = ties = 0
    for text in STORY_PROMPTS[:8]:
        ids = tok(text, return_tensors="pt")["input_ids"]
        expected = greedy_reference(model, ids, 96)
        out = gen.generate(ids, 96)
        ties += count_tie_or_fail(model, ids, expected, out.token_ids)
        assert out.stats.lookup_tokens <= sum(out.stats.accept_lengths)
        lookup_tokens += out.stats.lookup_tokens
        forwards += out.stats.target_forwards
        plain_forwards += plain.generate(ids, 96).stats.target_forwards
    assert ties == 0
    assert lookup_tokens > 50, "the lookup must get tokens accepted for this test to mean anything"
    assert forwards < plain_forwards


def test_max_new_tokens_and_eos_inside_an_accepted_lookup_run(stories):
    model, target, tok = stories
    draft = build_draft(target, "eagle1", seed=3)
    gen = SpeculativeGenerator(target, draft, tokenizer=tok, tree=TreeConfig(kind="chain", depth=1, lookup=16))
    ids = tok(STORY_PROMPTS[0], return_tensors="pt")["input_ids"]
    full = greedy_reference(model, ids, 120)
    for n in (37, 61, 90):
        assert gen.generate(ids, n).token_ids == full[:n]
    eos = full[70]  # any token as EOS: output stops at its first occurrence, wherever it lands in a step
    stop = full.index(eos)
    assert gen.generate(ids, 120, eos_token_id=eos).token_ids == full[:stop + 1]


def test_sampling_with_lookup_is_lossless():
    """2000 seeded runs whose prompt repeats its own greedy continuation, so lookup chains get accepted."""
    prompt = [1, 5, 9, 0, 5, 7, 11, 6, 5, 5, 9, 0]  # [1, 5, 9] and its greedy continuation, then [5, 9, 0] again
    model, table = build_logit_table(prompt)
    config = SamplingConfig(temperature=1.0, top_k=8)
    target = TargetModel(model)
    draft = build_draft(target, "eagle1", seed=5)
    gen = SpeculativeGenerator(target, draft, tree=TreeConfig(kind="chain", depth=1, lookup=3))
    counts = torch.zeros(VOCAB, VOCAB, VOCAB, dtype=torch.long)
    lookup_tokens = 0
    for seed in range(2000):
        out = gen.generate(torch.tensor([prompt]), 3, temperature=1.0, top_k=8, eos_token_id=[], seed=seed)
        counts[tuple(out.token_ids)] += 1
        lookup_tokens += out.stats.lookup_tokens
    assert lookup_tokens > 150, "the lookup must get tokens accepted for this test to mean anything"
    p, tv = chi_square_p_value(counts, exact_joint(table, config))
    assert p > 1e-3, f"p={p:.2e} tv={tv:.3f}"


def test_batched_rows_use_their_own_lookup_as_alone(stories):
    model, target, tok = stories
    draft = build_draft(target, "eagle3", draft_vocab_size=256, seed=3)
    gen = SpeculativeGenerator(target, draft, tokenizer=tok,
                               tree=TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8, lookup=8))
    prompts = STORY_PROMPTS[:5]
    result = gen.generate_batch(prompts, 64)
    for prompt, out in zip(prompts, result.outputs):
        alone = gen.generate(prompt, 64)
        assert out.token_ids == alone.token_ids
        assert out.stats.lookup_tokens == alone.stats.lookup_tokens
        assert out.stats.accept_lengths == alone.stats.accept_lengths
    assert sum(o.stats.lookup_tokens for o in result.outputs) > 20


def test_lookup_alone_without_a_draft_is_exact_alone_and_batched(stories):
    model, target, tok = stories
    gen = SpeculativeGenerator(target, None, tokenizer=tok, tree=TreeConfig(lookup=8))
    outputs = gen.generate_batch(STORY_PROMPTS[:4], 80).outputs
    accepted = 0
    for text, batched in zip(STORY_PROMPTS[:4], outputs):
        ids = tok(text, return_tensors="pt")["input_ids"]
        alone = gen.generate(ids, 80)
        assert count_tie_or_fail(model, ids, greedy_reference(model, ids, 80), alone.token_ids) == 0
        assert batched.token_ids == alone.token_ids and batched.stats.accept_lengths == alone.stats.accept_lengths
        assert alone.stats.lookup_tokens == sum(alone.stats.accept_lengths)  # every proposal is the lookup's
        accepted += alone.stats.lookup_tokens
    assert accepted > 40
    with pytest.raises(ValueError, match="draft model or n-gram lookup"):
        SpeculativeGenerator(target, None, tokenizer=tok).generate("Once", 4)
