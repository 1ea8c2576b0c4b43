"""Two `stream()` iterators of one SpeculativeGenerator, advanced step by step in turn (what the server's
round-robin scheduler does), each give exactly what they give alone: every stream owns its caches."""

from __future__ import annotations

import pytest
from decoding_helpers import STORY_PROMPTS

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.models import EagleDraftModel, TargetModel, build_draft, bundled_model_path


@pytest.fixture(scope="module", params=["eagle3"])  # an untrained EAGLE-1 head accepts ~nothing
def generator(request):
    from transformers import AutoTokenizer

    target = TargetModel.from_pretrained(bundled_model_path())
    draft = build_draft(target, request.param, seed=0)
    return SpeculativeGenerator(target, draft, AutoTokenizer.from_pretrained(str(bundled_model_path())))


def _interleave(iterators: list) -> list[list[int]]:
    """Round-robin: one chunk of each live iterator per turn."""
    tokens: list[list[int]] = [[] for _ in iterators]
    live = dict(enumerate(iterators))
    while live:
        for i, it in list(live.items()):
            chunk = next(it, None)
            if chunk is None:
                del live[i]
            else:
                tokens[i] += chunk.token_ids
    return tokens


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_interleaved_streams_equal_solo_runs(generator, kind):
    from eaglespec.decoding import GenerationStats, TreeConfig

    gen = SpeculativeGenerator(generator.target, generator.draft, generator.tokenizer, TreeConfig(kind=kind))
    prompts = STORY_PROMPTS[:3]
    solo = [gen.generate(p, max_new_tokens=30) for p in prompts]
    stats = [GenerationStats() for _ in prompts]
    mixed = _interleave([gen.stream(p, max_new_tokens=30, stats=s) for p, s in zip(prompts, stats)])
    assert mixed == [out.token_ids for out in solo]
    # greedy tokens are right even with a corrupted draft cache; the acceptance shows it
    assert [s.accept_lengths for s in stats] == [out.stats.accept_lengths for out in solo]
    sampled = [gen.generate(p, max_new_tokens=20, temperature=0.9, seed=i).token_ids for i, p in enumerate(prompts)]
    assert _interleave([gen.stream(p, max_new_tokens=20, temperature=0.9, seed=i)
                        for i, p in enumerate(prompts)]) == sampled
