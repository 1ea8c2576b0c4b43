"""Decoding on a CUDA device: the CPU guarantees hold there too (run with `pytest -m gpu`; skipped without CUDA).

Greedy fp32 output equals `model.generate(do_sample=False)` on the same device, token for token (numerical ties
excepted, as on the CPU), at batch size 1 and batched, for random drafts (mostly rejections) and oracle drafts
(long accepted runs, stops inside a run); seeded sampling repeats itself; bf16 runs.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from batch_helpers import PROMPT_LENGTHS, BatchOracleDraft, random_prompts
from decoding_helpers import STORY_PROMPTS, OracleDraft, count_tie_or_fail, greedy_reference
from fixtures import ARCHITECTURES, stories260k, stories260k_tokenizer, tiny_model

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import TargetModel, build_draft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("no_tf32")]

CUDA = torch.device("cuda")
TREES = [
    TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16),
    TreeConfig(kind="dynamic"),
    TreeConfig(kind="static"),
    TreeConfig(kind="chain", depth=4),
    TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8, lookup=8),
]
DRAFTS = [("eagle1", None), ("eagle3", None), ("eagle3", 48)]


@pytest.fixture(scope="module")
def stories():
    model = stories260k().to(CUDA)
    return model, TargetModel(model), stories260k_tokenizer()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_fp32_on_cuda_equals_hf_generate(arch):
    model = tiny_model(arch).to(CUDA)
    target = TargetModel(model)
    drafts = {d: build_draft(target, d[0], draft_vocab_size=d[1], seed=7).to(CUDA) for d in DRAFTS}
    ties = 0
    for p, ids in enumerate(random_prompts(target.vocab_size, (1, 8, 40), seed=ARCHITECTURES.index(arch))):
        ids = ids.to(CUDA)
        expected = greedy_reference(model, ids, 24)
        for draft, tree in itertools.islice(itertools.product(DRAFTS, TREES), p, None, 3):
            out = SpeculativeGenerator(target, drafts[draft], tree=tree).generate(ids, 24)
            ties += count_tie_or_fail(model, ids, expected, out.token_ids)
    assert ties <= 1


@pytest.mark.parametrize("tree", TREES[:4])
def test_oracle_runs_on_cuda_stop_exactly_inside_a_run(stories, tree):
    model, target, tok = stories
    for p, text in enumerate(STORY_PROMPTS[:4]):
        ids = tok(text, return_tensors="pt")["input_ids"].to(CUDA)
        continuation = greedy_reference(model, ids, 60, eos_token_id=-1)
        oracle = OracleDraft(target, ids[0].tolist() + continuation, seed=p).to(CUDA)
        out = SpeculativeGenerator(target, oracle, tokenizer=tok, tree=tree).generate(ids, 23 + p, eos_token_id=-1)
        assert out.token_ids == continuation[:23 + p]
        assert out.stats.tau > 2.5, out.stats


def test_batched_greedy_on_cuda_equals_hf_for_every_row(stories):
    model, target, _ = stories
    prompts = [ids.to(CUDA) for ids in random_prompts(target.vocab_size, PROMPT_LENGTHS[:5], seed=0)]
    continuations = [greedy_reference(model, ids, 20, eos_token_id=-1) for ids in prompts]
    oracle = BatchOracleDraft(target, [x[0].tolist() + c for x, c in zip(prompts, continuations)]).to(CUDA)
    random_draft = build_draft(target, "eagle3", seed=3).to(CUDA)
    ties = 0
    for draft in (oracle, random_draft):
        gen = SpeculativeGenerator(target, draft, tree=TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16))
        result = gen.generate_batch(prompts, 20, eos_token_id=-1)
        for ids, cont, out in zip(prompts, continuations, result.outputs):
            assert out.error is None and len(out.token_ids) == 20
            ties += count_tie_or_fail(model, ids, cont, out.token_ids)
    assert ties <= 1


def test_accepted_length_on_a_cuda_tree_with_a_cpu_path():
    """tune's simulated acceptance once indexed a CPU continuation with CUDA depths (bench --tree auto failed on
    an H200); the path may live on either device."""
    from eaglespec.decoding.tree import DraftTree
    from eaglespec.decoding.verify import accepted_length_on_path

    tree = DraftTree.from_parents(torch.tensor([7, 1, 2, 3], device=CUDA), torch.tensor([-1, 0, 0, 1], device=CUDA))
    for path in (torch.tensor([1, 3, 9]), torch.tensor([1, 3, 9], device=CUDA)):
        assert accepted_length_on_path(tree, path) == 2
    assert accepted_length_on_path(tree, torch.tensor([2, 5, 9])) == 1


def test_seeded_sampling_on_cuda_repeats(stories):
    model, target, tok = stories
    draft = build_draft(target, "eagle3", seed=5).to(CUDA)
    gen = SpeculativeGenerator(target, draft, tokenizer=tok)
    ids = tok(STORY_PROMPTS[0], return_tensors="pt")["input_ids"].to(CUDA)
    first, second = (gen.generate(ids, 40, temperature=0.8, top_p=0.95, seed=11, eos_token_id=-1) for _ in range(2))
    assert first.token_ids == second.token_ids and len(first.token_ids) == 40
    other = gen.generate(ids, 40, temperature=0.8, top_p=0.95, seed=12, eos_token_id=-1)
    assert other.token_ids != first.token_ids  # the seed is used (40 sampled tokens at T=0.8 coincide ~never)


def test_bf16_on_cuda_accepts_long_runs_and_differs_only_at_near_ties(stories):
    from eaglespec.evaluation.exactness import EXACT, MISMATCH, classify, next_logits_fn

    model, _, tok = stories
    bf16_model = stories260k().to(CUDA, torch.bfloat16)
    target = TargetModel(bf16_model)
    exact = 0
    for p, text in enumerate(STORY_PROMPTS[:8]):
        ids = tok(text, return_tensors="pt")["input_ids"].to(CUDA)
        reference = greedy_reference(bf16_model, ids, 48, eos_token_id=-1)
        oracle = OracleDraft(target, ids[0].tolist() + reference, seed=p).to(CUDA)
        out = SpeculativeGenerator(target, oracle, tree=TREES[0]).generate(ids, 48, eos_token_id=-1)
        verdict = classify([ids[0].tolist()], [reference], [out.token_ids], torch.bfloat16, next_logits_fn(model),
                           next_logits_fn(bf16_model))
        assert verdict.status != MISMATCH, verdict
        if verdict.status == EXACT:  # after a near-tie flip the oracle is off its path: no long runs to expect
            exact += 1
            assert out.stats.tau > 2.5, out.stats
    assert exact >= 2
