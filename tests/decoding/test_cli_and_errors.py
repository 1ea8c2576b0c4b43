"""Acceptance 4 (CLI on stories260K) and the bad-input contract."""

from __future__ import annotations

import json

import pytest
import torch
from decoding_helpers import STORY_PROMPTS, greedy_reference
from fixtures import stories260k, stories260k_tokenizer, tiny_model

from eaglespec.cli import main
from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import EagleDraftModel, TargetModel, build_draft


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("drafts") / "eagle3"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(out)]) == 0
    return out


def test_cli_generate_json_equals_transformers_greedy(draft_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([json.dumps({"prompt": STORY_PROMPTS[0]}),
                                  json.dumps({"turns": [STORY_PROMPTS[1], "ignored second turn"]}),
                                  STORY_PROMPTS[2]]) + "\n")
    capsys.readouterr()
    assert main(["generate", "--base", "stories260K", "--draft", str(draft_dir), "--input", str(prompts),
                 "--max-new-tokens", "40", "--json", "--tree", "static"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, tok = stories260k(), stories260k_tokenizer()
    assert len(records) == 3
    for record, text in zip(records, STORY_PROMPTS[:3]):
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert record["token_ids"] == greedy_reference(model, ids, 40)
        assert record["new_tokens"] == len(record["token_ids"])
        assert record["tau"] == pytest.approx(record["new_tokens"] / record["target_forwards"])
        assert record["text"] == tok.decode(record["token_ids"], skip_special_tokens=True)


def test_cli_stream_show_accepted_and_vanilla(draft_dir, capsys):
    assert main(["generate", "--base", "stories260K", "--draft", str(draft_dir), "--prompt", "Once upon a time",
                 "--max-new-tokens", "12", "--stream", "--show-accepted", "--temperature", "0.8", "--seed", "1"]) == 0
    assert "target forwards" in capsys.readouterr().out
    assert main(["generate", "--base", "stories260K", "--vanilla", "--prompt", "Once", "--max-new-tokens", "5",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tau"] == 1.0


def test_cli_lookup_decoding_without_a_draft(capsys):
    prompt = STORY_PROMPTS[0]
    assert main(["generate", "--base", "stories260K", "--lookup", "8", "--prompt", prompt, "--max-new-tokens", "120",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    ids = stories260k_tokenizer()(prompt, return_tensors="pt")["input_ids"]
    assert record["token_ids"] == greedy_reference(stories260k(), ids, 120) and record["tau"] > 1.0
    assert main(["generate", "--base", "stories260K", "--prompt", prompt]) == 1
    assert "--lookup N" in capsys.readouterr().err


def test_cli_reports_bad_input(draft_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    assert main(["generate", "--base", "stories260K", "--draft", str(draft_dir), "--input", str(bad)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["generate", "--base", "stories260K", "--draft", str(draft_dir), "--prompt", "x",
                 "--top-p", "0"]) == 1
    assert "top_p" in capsys.readouterr().err


def test_draft_for_another_target_is_rejected_at_load(tmp_path):
    other = build_draft(TargetModel(tiny_model("llama")), "eagle1", seed=0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not this target"):
        SpeculativeGenerator.from_pretrained("stories260K", tmp_path / "other")
    with pytest.raises(ValueError, match="not this target"):
        EagleDraftModel.from_pretrained(tmp_path / "other", target=TargetModel(stories260k()))


@pytest.fixture(scope="module")
def generator():
    target = TargetModel(stories260k())
    return SpeculativeGenerator(target, build_draft(target, "eagle1", seed=0), tokenizer=stories260k_tokenizer())


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_invalid_sampling_parameters(generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator.generate("Once", **{"max_new_tokens": 4, **kwargs})


def test_tree_parameters_that_cannot_work():
    target = TargetModel(stories260k())
    draft = build_draft(target, "eagle1", seed=0)
    with pytest.raises(ValueError, match="total_tokens=40"):  # depth 2, top_k 3 -> 3 + 9 = 12 nodes
        SpeculativeGenerator(target, draft, tree=TreeConfig(top_k=3, depth=2, total_tokens=40))
    SpeculativeGenerator(target, draft, tree=TreeConfig(top_k=3, depth=2, total_tokens=13))  # exactly fits
    with pytest.raises(ValueError, match="kind"):
        TreeConfig(kind="beam")
    with pytest.raises(ValueError, match="no parent path"):
        SpeculativeGenerator(target, draft, tree=TreeConfig(kind="static", paths=((0,), (1, 0))))
    small = build_draft(target, "eagle3", draft_vocab_size=4, seed=0)
    SpeculativeGenerator(target, small, tree=TreeConfig(kind="static"))  # mc_sim's highest rank 3 < 4: ok
    with pytest.raises(ValueError, match="rank"):
        SpeculativeGenerator(target, small, tree=TreeConfig(kind="static", paths=((0,), (4,))))
    # top_k above the draft vocabulary is clamped (documented): 4 + 16 = 20 candidates
    gen = SpeculativeGenerator(target, small, tree=TreeConfig(top_k=10, depth=2, total_tokens=21))
    assert gen.drafter.top_k == 4


def test_prompt_too_long_and_context_fills_cleanly(generator):
    ctx = generator.context_length  # 512 for stories260K
    with pytest.raises(ValueError, match="context"):
        generator.generate(torch.ones(1, ctx, dtype=torch.long), 4)
    ids = torch.cat([torch.tensor([1]), torch.randint(3, 500, (ctx - 21,))])[None]  # ctx - 20 tokens
    for generate in (generator.generate, generator.vanilla_generate):
        out = generate(ids, 100, eos_token_id=[])
        assert out.stats.finish_reason == "length" and len(out.token_ids) == 20  # sequence == context exactly


def test_stop_strings_and_stream_chunks(generator):
    text = STORY_PROMPTS[0]
    full = generator.generate(text, 40, eos_token_id=[])
    word = full.text.split()[5]
    out = generator.generate(text, 40, eos_token_id=[], stop=[word])
    assert word in out.text and out.stats.finish_reason == "stop"
    assert word not in generator.decode(out.token_ids[:-1])  # cut at the token completing it
    assert out.token_ids == full.token_ids[: len(out.token_ids)]
    chunks = list(generator.stream(text, 40, eos_token_id=[]))
    assert [t for c in chunks for t in c.token_ids] == full.token_ids
    assert "".join(c.text for c in chunks) == full.text
