"""Batched decoding, acceptance 2: lossless sampling for a sequence inside a batch of other sequences.

The chi-square test of test_lossless_sampling (joint distribution of the first 3 tokens against the exact
target distribution) on samples of PROMPT decoded in running batches: each batch holds 4 PROMPT rows (own
seeds) and 3 distractor rows of other lengths and other settings (greedy, top-p), joining at different steps.
The same test must fail when the acceptance rule is broken on purpose."""

from __future__ import annotations

import pytest
import torch
from test_lossless_sampling import (  # noqa: F401  (fixtures, via getfixturevalue)
    NUM_TOKENS,
    P_THRESHOLD,
    PROMPT,
    TREE_PATHS,
    VOCAB,
    _accept_first_always,
    chi_square_p_value,
    exact_joint,
    logit_table,
    tiny_vocab_model,
)

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding import verify as verify_module
from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.models import TargetModel, build_draft

SETTING = dict(temperature=1.0, top_k=8)
DISTRACTORS = [  # (prompt, max_new_tokens, sampling settings)
    ([1, 9, 4, 4, 10, 3, 6, 11, 5], 9, dict(temperature=0.0)),
    ([1], 7, dict(temperature=0.8, top_p=0.9)),
    ([1, 3, 3, 8, 2, 7], 5, dict(temperature=1.2)),
]


def batched_counts(gen: SpeculativeGenerator, calls: int) -> tuple[torch.Tensor, int]:
    """Counts [V, V, V] of PROMPT's first tokens over `calls` running batches of 4 PROMPT rows; draft tokens
    accepted in those rows."""
    counts = torch.zeros(VOCAB, VOCAB, VOCAB, dtype=torch.long)
    accepted = 0
    for call in range(calls):
        batch = gen.running_batch()
        plan = [[("d", 0), ("m", 0), ("m", 1)], [("d", 1), ("m", 2)], [("d", 2), ("m", 3)]]  # step -> joiners
        measured = set()
        step = 0
        while step < len(plan) or len(batch):
            for kind, i in plan[step] if step < len(plan) else []:
                if kind == "m":
                    measured.add(batch.add(torch.tensor(PROMPT), NUM_TOKENS, eos_token_id=[],
                                           seed=4 * call + i, **SETTING))
                else:
                    prompt, max_new, setting = DISTRACTORS[i]
                    batch.add(torch.tensor(prompt), max_new, eos_token_id=[], seed=10**6 + 4 * call + i, **setting)
            for event in batch.step():
                if event.finished and event.request_id in measured:
                    counts[tuple(event.output.token_ids)] += 1
                    accepted += sum(event.output.from_draft)
            step += 1
    return counts, accepted


@pytest.fixture(scope="module")
def generator(request):
    target = TargetModel(request.getfixturevalue("tiny_vocab_model"))
    return SpeculativeGenerator(target, build_draft(target, "eagle1", seed=5),
                                tree=TreeConfig(kind="static", paths=TREE_PATHS))


@pytest.fixture(scope="module")
def exact(request) -> torch.Tensor:
    """The exact joint distribution [V, V, V] of PROMPT's first three tokens under SETTING."""
    return exact_joint(request.getfixturevalue("logit_table"), SamplingConfig(**SETTING))


def test_sampling_inside_a_batch_is_lossless(generator, exact):
    counts, accepted = batched_counts(generator, calls=500)  # 2000 samples
    assert int(counts.sum()) == 2000
    assert accepted > 500, "the draft must get tokens accepted for this test to mean anything"
    p, tv = chi_square_p_value(counts, exact)
    assert p > P_THRESHOLD, f"p={p:.2e} tv={tv:.3f}"


def test_broken_acceptance_rule_inside_a_batch_is_detected(generator, exact, monkeypatch):
    monkeypatch.setattr(verify_module, "_sibling_acceptance", _accept_first_always)
    counts, _ = batched_counts(generator, calls=150)  # 600 samples suffice for this bias
    p, tv = chi_square_p_value(counts, exact)
    assert p < P_THRESHOLD, f"a broken rule went unnoticed: p={p:.2e} tv={tv:.3f}"


def test_seeded_rows_reproduce_and_differ(generator):
    """A row's samples depend on its own seed only: the same seeds give the same outputs whatever else is in
    the batch, and the same as decoding it alone with that seed; an int seed gives row i the seed + i."""
    prompts = [torch.tensor(PROMPT)] * 4
    first = generator.generate_batch(prompts, 6, seed=[3, 4, 5, 6], eos_token_id=[], **SETTING).outputs
    again = generator.generate_batch(prompts[:2] + [torch.tensor([1, 4])] * 3, 6, seed=[3, 4, 9, 9, 9],
                                     eos_token_id=[], **SETTING).outputs
    assert [o.token_ids for o in first[:2]] == [o.token_ids for o in again[:2]]
    int_seed = generator.generate_batch(prompts, 6, seed=3, eos_token_id=[], **SETTING).outputs
    assert [o.token_ids for o in int_seed] == [o.token_ids for o in first]
    assert len({tuple(o.token_ids) for o in first}) > 1
    for seed, out in zip([3, 4, 5, 6], first):  # each row draws from its own generator, as alone
        alone = generator.generate(torch.tensor(PROMPT), 6, seed=seed, eos_token_id=[], **SETTING)
        assert out.token_ids == alone.token_ids and out.stats.accept_lengths == alone.stats.accept_lengths
