"""Batched decoding: the API contract (bad rows fail alone, mixed chat / plain prompts, streaming, stop strings,
full context, stats and timings)."""

from __future__ import annotations

import pytest
import torch
from decoding_helpers import STORY_PROMPTS
from fixtures import stories260k, stories260k_tokenizer

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import TargetModel, build_draft

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def generator():
    target = TargetModel(stories260k())
    return SpeculativeGenerator(target, build_draft(target, "eagle3", seed=0), tokenizer=stories260k_tokenizer(),
                                tree=TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16))


def test_bad_rows_fail_alone_with_a_clear_error(generator):
    ctx = generator.context_length
    prompts = [STORY_PROMPTS[0], torch.ones(ctx, dtype=torch.long), [], [{"role": "user", "content": "Hi"}],
               STORY_PROMPTS[1]]
    result = generator.generate_batch(prompts, 12)
    good, too_long, empty, chat, good2 = result.outputs
    assert too_long.stats.finish_reason == "error" and "prompt 1" in too_long.error and "context" in too_long.error
    assert "empty prompt" in empty.error and "chat template" in chat.error
    assert too_long.token_ids == [] and result.timings[1] is None
    for out, text in ((good, STORY_PROMPTS[0]), (good2, STORY_PROMPTS[1])):
        assert out.error is None and out.token_ids == generator.generate(text, 12).token_ids
    with pytest.raises(ValueError, match="context"):  # the running batch rejects it at add(), a server's 4xx
        generator.running_batch().add(torch.ones(ctx, dtype=torch.long))


def test_bad_shared_settings_raise(generator):
    with pytest.raises(ValueError, match="temperature"):
        generator.generate_batch(STORY_PROMPTS[:2], 4, temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate_batch(STORY_PROMPTS[:2], 0)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        generator.generate_batch(STORY_PROMPTS[:3], 4, seed=[1, 2])
    with pytest.raises(ValueError, match="max_batch_size"):
        generator.running_batch(max_batch_size=0)


def test_chat_and_plain_prompts_mixed(generator):
    tokenizer = stories260k_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    gen = SpeculativeGenerator(generator.target, generator.draft, tokenizer=tokenizer, tree=generator.tree)
    chat = [{"role": "user", "content": "Tell me a story."}]
    result = gen.generate_batch([chat, STORY_PROMPTS[2]], 16)
    assert result.outputs[0].token_ids == gen.generate(chat, 16).token_ids
    assert result.outputs[1].token_ids == gen.generate(STORY_PROMPTS[2], 16).token_ids


@pytest.mark.parametrize("kind", ["dynamic", "static", "chain"])
def test_stream_stop_strings_and_full_context(generator, kind):
    """Streamed chunks add up to each output; a stop string cuts one row as alone; rows whose context fills
    (trees cut to the room left) stop with "length" while the others go on."""
    generator = SpeculativeGenerator(generator.target, generator.draft, tokenizer=generator.tokenizer,
                                     tree=TreeConfig(kind=kind, depth=4) if kind == "chain" else TreeConfig(kind=kind))
    ctx = generator.context_length
    full = generator.generate(STORY_PROMPTS[0], 40, eos_token_id=[])
    word = full.text.split()[5]
    long_prompt = torch.cat([torch.tensor([1]), torch.randint(3, 500, (ctx - 21,))])  # ctx - 20 tokens
    longest = torch.cat([torch.tensor([1]), torch.randint(3, 500, (ctx - 2,))])  # room for one token only
    prompts = [STORY_PROMPTS[0], long_prompt, STORY_PROMPTS[4], longest]
    tokens, texts, outputs = {}, {}, {}
    for event in generator.stream_batch(prompts, 40, eos_token_id=[], stop=[word]):
        tokens[event.request_id] = tokens.get(event.request_id, []) + event.chunk.token_ids
        texts[event.request_id] = texts.get(event.request_id, "") + event.chunk.text
        if event.finished:
            outputs[event.request_id] = event.output
    for i, out in outputs.items():
        assert tokens[i] == out.token_ids and texts[i] == out.text
    alone = generator.generate(STORY_PROMPTS[0], 40, eos_token_id=[], stop=[word])
    assert outputs[0].token_ids == alone.token_ids and outputs[0].stats.finish_reason == "stop"
    assert len(outputs[1].token_ids) == 20 and outputs[1].stats.finish_reason == "length"
    assert outputs[1].token_ids == generator.generate(long_prompt, 40, eos_token_id=[]).token_ids
    assert len(outputs[3].token_ids) == 1 and outputs[3].stats.finish_reason == "length"


def test_stats_and_timings(generator):
    result = generator.generate_batch(STORY_PROMPTS[:5], 20, max_batch_size=2, eos_token_id=[])
    assert result.new_tokens == 100 and result.wall_time > 0 and result.tokens_per_second > 0
    assert result.batch_forwards < sum(o.stats.target_forwards for o in result.outputs)
    for out, timing in zip(result.outputs, result.timings):
        stats = out.stats
        assert stats.finish_reason == "length" and stats.new_tokens == 20
        assert stats.target_forwards == 1 + len(stats.accept_lengths)  # prefill + one per step
        assert stats.new_tokens <= stats.target_forwards + sum(stats.accept_lengths)  # the last step may be cut
        assert 0 <= timing.queued <= timing.time_to_first_token <= timing.latency <= result.wall_time
        busy = stats.draft_time + stats.verify_time + stats.other_time
        assert busy == pytest.approx(timing.latency - timing.queued, rel=1e-6, abs=1e-6)
    assert result.timings[4].queued > 0  # waited for a free row (max_batch_size 2)



def test_length_dependent_rope_is_detected_and_warned(caplog):
    from transformers import LlamaConfig, LlamaForCausalLM

    from eaglespec.decoding.batch import length_dependent_rope

    assert not length_dependent_rope(LlamaConfig())
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert length_dependent_rope(config)
    target = TargetModel(LlamaForCausalLM(config).eval())
    with caplog.at_level("WARNING", logger="eaglespec.decoding.batch"):
        SpeculativeGenerator(target, None).running_batch(vanilla=True)
    assert "depends on the sequence length" in caplog.text
