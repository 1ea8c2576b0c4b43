"""Batched decoding, acceptance 1 and 3: greedy fp32 outputs of every row == the row decoded alone == HF
`model.generate(do_sample=False)`, for batch sizes 1, 2, 5, 8 with different prompt lengths, all fixture
families and stories260K, both draft methods, all tree kinds, rows finishing at different steps (their own
max_new_tokens / EOS, also inside accepted runs), and requests joining a running batch at different steps.

As at batch size 1 the only tolerated difference is a numerical tie (count_tie_or_fail)."""

from __future__ import annotations

import itertools

import pytest
import torch
from batch_helpers import PROMPT_LENGTHS, BatchOracleDraft, random_prompts
from decoding_helpers import STORY_PROMPTS, count_tie_or_fail, greedy_reference
from fixtures import ARCHITECTURES, stories260k, stories260k_tokenizer, tiny_model

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import TargetModel, build_draft

TREES = [
    TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16),
    TreeConfig(kind="dynamic", top_k=3, depth=6, total_tokens=12),
    TreeConfig(kind="static"),  # EAGLE-1 mc_sim_7b_63
    TreeConfig(kind="chain", depth=4),
    TreeConfig(kind="static", paths=((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))),
    TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8, lookup=8),  # n-gram lookup merged in
]
DRAFTS = [("eagle1", None), ("eagle3", None), ("eagle3", 48)]  # (method, draft vocab size; None = full)
COMBOS = list(itertools.product(DRAFTS, TREES))
BATCH_SIZES = (8, 5, 2, 1)
MAX_NEW = 20


def _run_batch(gen: SpeculativeGenerator, prompts, max_news, eos=None, max_batch_size=None, vanilla=False):
    """All prompts through one RunningBatch (each with its own max_new_tokens / EOS) -> token ids per prompt."""
    batch = gen.running_batch(vanilla=vanilla, max_batch_size=max_batch_size)
    eos = eos or [None] * len(prompts)
    ids = [batch.add(p, m, eos_token_id=e) for p, m, e in zip(prompts, max_news, eos)]
    outputs = {}
    while len(batch):
        outputs.update({e.request_id: e.output for e in batch.step() if e.finished})
    return [outputs[i] for i in ids]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fixture_architectures_batched_equals_alone_and_hf(arch):
    model = tiny_model(arch)
    target = TargetModel(model)
    offset = ARCHITECTURES.index(arch)
    prompts = random_prompts(target.vocab_size, PROMPT_LENGTHS, seed=offset)
    max_news = [MAX_NEW - 2 * i for i in range(len(prompts))]  # rows finish at different steps
    references = [greedy_reference(model, ids, m) for ids, m in zip(prompts, max_news)]
    drafts = {(m, vd): build_draft(target, m, draft_vocab_size=vd, seed=7) for m, vd in DRAFTS}
    ties = 0
    for i, size in enumerate(BATCH_SIZES):  # every combo is used by some architecture
        (method, vd), tree = COMBOS[(offset * len(BATCH_SIZES) + i) % len(COMBOS)]
        gen = SpeculativeGenerator(target, drafts[(method, vd)], tree=tree)
        outputs = _run_batch(gen, prompts[:size], max_news[:size])
        for ids, m, ref, out in zip(prompts, max_news, references, outputs):
            ties += count_tie_or_fail(model, ids, ref, out.token_ids)
            assert out.token_ids == gen.generate(ids, m).token_ids
            assert out.stats.new_tokens == len(out.token_ids) <= m
            assert out.stats.target_forwards == 1 + len(out.stats.accept_lengths)
    assert ties <= 1, f"{ties} numerical ties: too many to be ties"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fixture_architectures_oracle_deep_runs(arch):
    """Deep accepted runs through every family's attention (sdpa / eager, GQA, MoE, sliding layers) at batch
    size 8: rows stop at their own max_new_tokens or EOS, mostly inside accepted runs."""
    model = tiny_model(arch)
    target = TargetModel(model)
    offset = ARCHITECTURES.index(arch)
    prompts = random_prompts(target.vocab_size, PROMPT_LENGTHS, seed=100 + offset)
    continuations = [greedy_reference(model, x, 40, eos_token_id=-1) for x in prompts]
    oracle = BatchOracleDraft(target, [x[0].tolist() + c for x, c in zip(prompts, continuations)], seed=offset)
    tree = TREES[offset % len(TREES)]
    gen = SpeculativeGenerator(target, oracle, tree=tree)
    eos = [-1 if r % 2 == 0 else next((t for i, t in enumerate(c) if i >= 6 + r and t not in c[:i]), -1)
           for r, c in enumerate(continuations)]
    max_news = [13 + 3 * r if r % 2 == 0 else 40 for r in range(len(prompts))]
    outputs = _run_batch(gen, prompts, max_news, eos=eos)
    ties = 0
    for x, c, e, m, out in zip(prompts, continuations, eos, max_news, outputs):
        ties += count_tie_or_fail(model, x, greedy_reference(model, x, m, eos_token_id=e), out.token_ids)
        assert out.stats.tau > 1.5, (tree, out.stats)
    assert ties <= 1


@pytest.fixture(scope="module")
def stories():
    model = stories260k()
    return model, TargetModel(model), stories260k_tokenizer()


def test_stories260k_batched_all_combos(stories):
    """Text prompts of different lengths, batch sizes 8 / 5 / 2 / 1, every (draft, tree) combo."""
    model, target, tok = stories
    prompts = STORY_PROMPTS[:10]
    ids = [tok(p, return_tensors="pt")["input_ids"] for p in prompts]
    references = [greedy_reference(model, x, 32) for x in ids]
    drafts = {(m, vd): build_draft(target, m, draft_vocab_size=vd and 256, seed=3) for m, vd in DRAFTS}
    ties = 0
    for c, ((method, vd), tree) in enumerate(COMBOS):
        gen = SpeculativeGenerator(target, drafts[(method, vd)], tokenizer=tok, tree=tree)
        size = BATCH_SIZES[c % len(BATCH_SIZES)]
        result = gen.generate_batch(prompts[c % 3: c % 3 + size], 32)
        for x, ref, out in zip(ids[c % 3:], references[c % 3:], result.outputs):
            ties += count_tie_or_fail(model, x, ref, out.token_ids)
            assert out.token_ids == gen.generate(x, 32).token_ids
            assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)
    assert ties <= 1


@pytest.mark.parametrize("tree", [TreeConfig(kind="dynamic", top_k=3, depth=6, total_tokens=20),
                                  TreeConfig(kind="static"), TreeConfig(kind="chain", depth=5)])
def test_oracle_deep_runs_eos_and_max_new_tokens_inside_runs(stories, tree):
    """Long accepted runs in every row; each row stops at its own max_new_tokens or its own EOS, often inside
    an accepted run, at different steps, while the others go on."""
    model, target, tok = stories
    ids = [tok(p, return_tensors="pt")["input_ids"] for p in STORY_PROMPTS[:8]]
    continuations = [greedy_reference(model, x, 70, eos_token_id=-1) for x in ids]
    oracle = BatchOracleDraft(target, [x[0].tolist() + c for x, c in zip(ids, continuations)])
    gen = SpeculativeGenerator(target, oracle, tokenizer=tok, tree=tree)
    # even rows: max_new_tokens 17, 22, ...; odd rows: an EOS first appearing mid-continuation
    eos = [-1 if r % 2 == 0 else next(t for i, t in enumerate(c) if i >= 9 + r and t not in c[:i])
           for r, c in enumerate(continuations)]
    max_news = [17 + 5 * r if r % 2 == 0 else 70 for r in range(8)]
    outputs = _run_batch(gen, ids, max_news, eos=eos)
    inside_run = 0
    for x, c, e, m, out in zip(ids, continuations, eos, max_news, outputs):
        expected = c[:m] if e == -1 else greedy_reference(model, x, m, eos_token_id=e)
        assert out.token_ids == expected
        assert out.stats.finish_reason == ("length" if e == -1 else "stop")
        assert out.stats.tau > 2.0, out.stats
        inside_run += out.from_draft[-1]
    assert inside_run >= 3
    assert len({o.stats.target_forwards for o in outputs}) > 2  # rows finished at different steps


def test_requests_joining_at_different_steps_equal_alone(stories):
    """Continuous batching: requests added between steps, a batch capped at 3 rows (others wait), one request
    cancelled mid-way: every completed request equals its batch-size-1 greedy output."""
    model, target, tok = stories
    gen = SpeculativeGenerator(target, build_draft(target, "eagle3", seed=3), tokenizer=tok,
                               tree=TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16))
    batch = gen.running_batch(max_batch_size=3)
    plan = {0: [0, 1], 2: [2], 3: [3, 4, 5], 7: [6]}  # step -> prompts joining before it
    lengths = [30, 12, 25, 8, 40, 16, 20]
    request_of, outputs, step, waited = {}, {}, 0, 0
    while step <= max(plan) or len(batch):
        for p in plan.get(step, []):
            request_of[batch.add(STORY_PROMPTS[p], lengths[p])] = p
        waited = max(waited, batch.num_waiting - (3 - batch.num_running))
        events = batch.step()
        assert len({e.request_id for e in events}) == len(events) and batch.num_running <= 3
        outputs.update({request_of[e.request_id]: e.output for e in events if e.finished})
        if step == 4:
            cancelled = next(r for r, p in request_of.items() if p == 4)
            assert batch.cancel(cancelled) and not batch.cancel(cancelled)
        step += 1
    assert sorted(outputs) == [0, 1, 2, 3, 5, 6] and waited > 0  # some requests waited for a free row
    for p, out in outputs.items():
        ids = tok(STORY_PROMPTS[p], return_tensors="pt")["input_ids"]
        assert count_tie_or_fail(model, ids, greedy_reference(model, ids, lengths[p]), out.token_ids) == 0
        assert out.token_ids == gen.generate(STORY_PROMPTS[p], lengths[p]).token_ids


def test_batched_vanilla_matches_hf_greedy(stories):
    model, target, tok = stories
    gen = SpeculativeGenerator(target, None, tokenizer=tok)
    result = gen.generate_batch(STORY_PROMPTS[:5], 24, vanilla=True, max_batch_size=4)
    for text, out in zip(STORY_PROMPTS[:5], result.outputs):
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert count_tie_or_fail(model, ids, greedy_reference(model, ids, 24), out.token_ids) == 0
        assert out.stats.target_forwards == out.stats.new_tokens and out.stats.tau == 1.0
    assert result.batch_forwards < sum(o.stats.target_forwards for o in result.outputs)  # rows shared forwards
    with pytest.raises(ValueError, match="draft"):
        gen.generate_batch(STORY_PROMPTS[:2], 4)


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "gemma3"])
def test_sliding_window_rows_stop_at_the_window_as_alone(arch):
    """Windowed families decode exactly up to their window (context_length), per row, as at batch size 1."""
    import transformers
    from fixtures import _configs

    cls_name, kwargs = _configs()[arch]
    config = getattr(transformers, cls_name)(**dict(kwargs, sliding_window=24))
    config._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    target = TargetModel(model)
    gen = SpeculativeGenerator(target, build_draft(target, "eagle3", seed=1),
                               tree=TreeConfig(kind="dynamic", top_k=3, depth=4, total_tokens=10))
    assert gen.context_length == 24
    prompts = random_prompts(target.vocab_size, (3, 15, 22, 9), seed=2)
    result = gen.generate_batch(prompts, 40, eos_token_id=[])
    for ids, out in zip(prompts, result.outputs):
        n = ids.shape[1]
        assert len(out.token_ids) == 24 - n and out.stats.finish_reason == "length"
        assert out.token_ids == gen.generate(ids, 40, eos_token_id=[]).token_ids
        assert count_tie_or_fail(model, ids, greedy_reference(model, ids, 24 - n, eos_token_id=-1),
                                 out.token_ids) == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sweep_every_combo_and_batch_size(arch):
    """The long sweep: every (draft, tree) combo at every batch size on one family."""
    model = tiny_model(arch)
    target = TargetModel(model)
    prompts = random_prompts(target.vocab_size, PROMPT_LENGTHS, seed=200)
    max_news = [MAX_NEW + 4 - 3 * i for i in range(len(prompts))]
    references = [greedy_reference(model, ids, m) for ids, m in zip(prompts, max_news)]
    drafts = {(m, vd): build_draft(target, m, draft_vocab_size=vd, seed=11) for m, vd in DRAFTS}
    ties = 0
    for ((method, vd), tree), size in itertools.product(COMBOS, BATCH_SIZES):
        gen = SpeculativeGenerator(target, drafts[(method, vd)], tree=tree)
        for ids, ref, out in zip(prompts, references, _run_batch(gen, prompts[:size], max_news[:size])):
            ties += count_tie_or_fail(model, ids, ref, out.token_ids)
    assert ties <= 3
