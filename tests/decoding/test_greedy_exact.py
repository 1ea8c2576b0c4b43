"""Acceptance 1: greedy speculative output == model.generate(do_sample=False), token for token (fp32).

The only tolerated difference is a numerical tie (target logits of the two tokens within 1e-4 at the first
differing position); ties are counted and must stay rare.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from decoding_helpers import (
    STORY_PROMPTS,
    OracleDraft,
    count_tie_or_fail,
    greedy_reference,
)
from fixtures import ARCHITECTURES, stories260k, stories260k_tokenizer, tiny_model

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import TargetModel, build_draft

# (method, tree) combinations; every architecture sees all of them across its prompts.
TREES = [
    TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16),
    TreeConfig(kind="dynamic"),  # reference defaults: top_k 10, total 60, depth 5 / 7
    TreeConfig(kind="static"),  # EAGLE-1 mc_sim_7b_63
    TreeConfig(kind="chain", depth=3),
    TreeConfig(kind="chain", depth=6),
    TreeConfig(kind="static", paths=((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))),
    TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8, lookup=8),  # n-gram lookup merged in
    TreeConfig(kind="chain", depth=2, lookup=10),
]
DRAFTS = [("eagle1", None), ("eagle3", None), ("eagle3", 48)]  # (method, draft vocab size; None = full)
COMBOS = list(itertools.product(DRAFTS, TREES))
MAX_NEW = 24


def _prompts(vocab: int, count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 3, 8, 17, 40][:count]
    return [torch.cat([torch.tensor([1]), torch.randint(3, vocab, (n - 1,), generator=g)])[None] for n in lengths]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fixture_architectures_match_hf_greedy(arch):
    model = tiny_model(arch)
    target = TargetModel(model)
    drafts = {(m, vd): build_draft(target, m, draft_vocab_size=vd, seed=7) for m, vd in DRAFTS}
    ties = 0
    # 5 prompts x 4 combos each = 20 runs per architecture, covering all 24 (draft, tree) combos.
    offset = ARCHITECTURES.index(arch)
    for p, ids in enumerate(_prompts(target.vocab_size, 5, seed=offset)):
        expected = greedy_reference(model, ids, MAX_NEW)
        for c in range(4):
            (method, vd), tree = COMBOS[(offset * 5 + p * 4 + c) % len(COMBOS)]
            out = SpeculativeGenerator(target, drafts[(method, vd)], tree=tree).generate(ids, MAX_NEW)
            ties += count_tie_or_fail(model, ids, expected, out.token_ids)
            assert out.stats.new_tokens == len(out.token_ids) <= MAX_NEW
    assert ties <= 2, f"{ties} numerical ties in 20 runs: too many to be ties"


@pytest.fixture(scope="module")
def stories():
    model = stories260k()
    return model, TargetModel(model), stories260k_tokenizer()


def test_stories260k_20_prompts_all_combos(stories):
    model, target, tok = stories
    drafts = {(m, vd): build_draft(target, m, draft_vocab_size=vd and 256, seed=3) for m, vd in DRAFTS}
    ties = runs = 0
    for p, text in enumerate(STORY_PROMPTS):
        ids = tok(text, return_tensors="pt")["input_ids"]
        expected = greedy_reference(model, ids, 40)
        for c in range(3):
            (method, vd), tree = COMBOS[(p * 3 + c) % len(COMBOS)]
            gen = SpeculativeGenerator(target, drafts[(method, vd)], tokenizer=tok, tree=tree)
            ties += count_tie_or_fail(model, ids, expected, gen.generate(ids, 40).token_ids)
            runs += 1
    assert runs >= 60 and ties <= 2


def test_vanilla_matches_hf_greedy(stories):
    model, target, tok = stories
    gen = SpeculativeGenerator(target, None, tokenizer=tok)
    for text in STORY_PROMPTS[:5]:
        ids = tok(text, return_tensors="pt")["input_ids"]
        out = gen.vanilla_generate(ids, 30)
        assert count_tie_or_fail(model, ids, greedy_reference(model, ids, 30), out.token_ids) == 0
        assert out.stats.target_forwards == out.stats.new_tokens and out.stats.tau == 1.0


@pytest.mark.parametrize("tree", [TreeConfig(kind="dynamic", top_k=3, depth=6, total_tokens=20),
                                  TreeConfig(kind="static"), TreeConfig(kind="chain", depth=5)])
def test_oracle_draft_deep_runs_eos_and_max_new_tokens_inside_a_run(stories, tree):
    """An oracle draft proposes the target's own continuation, so runs are long; stopping must still cut
    exactly at max_new_tokens and at the first EOS even when they fall inside an accepted run."""
    model, target, tok = stories
    stopped_inside_run = 0
    for p, text in enumerate(STORY_PROMPTS[:8]):
        ids = tok(text, return_tensors="pt")["input_ids"]
        continuation = greedy_reference(model, ids, 80, eos_token_id=-1)  # no EOS: the full continuation
        oracle = OracleDraft(target, ids[0].tolist() + continuation, seed=p)
        gen = SpeculativeGenerator(target, oracle, tokenizer=tok, tree=tree)
        max_new = 17 + p * 5  # rarely a multiple of the run length
        out = gen.generate(ids, max_new, eos_token_id=-1)
        assert out.token_ids == continuation[:max_new]
        assert out.stats.tau > 2.5, out.stats
        stopped_inside_run += out.from_draft[-1]
        # EOS = a token first appearing mid-continuation: generation stops right after it.
        eos = next(t for i, t in enumerate(continuation) if i >= 9 and t not in continuation[:i])
        out = gen.generate(ids, 80, eos_token_id=eos)
        assert out.token_ids == greedy_reference(model, ids, 80, eos_token_id=eos)
        assert out.token_ids[-1] == eos and out.stats.finish_reason == "stop"
        stopped_inside_run += out.from_draft[-1]
    assert stopped_inside_run >= 6  # the stop token was a draft token accepted mid-run, many times over
