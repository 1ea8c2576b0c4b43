"""Self-distillation: `eaglespec regenerate` on the bundled stories260K (from BOS, text, chat, FIM) plus
resume after a SIGKILL, partial-line repair and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import stories260k, stories260k_tokenizer
from paths import shared_path

from eaglespec.cli import main
from eaglespec.data import regenerate as rg

# A minimal chat template for stories260K's tokenizer (it ships none). Assistant turns end with EOS, a
# special token, so `prepare` can find where each answer ends.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return stories260k()


def make_generator(model, temperature=0.0, max_new_tokens=24, tokenizer=None, **kw) -> rg.Generator:
    settings = rg.SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, **kw)
    return rg.Generator(model, tokenizer or stories260k_tokenizer(), settings)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def greedy_reference(model, prompt: list[int], max_new_tokens: int, stop: int = 2) -> list[int]:
    """Unbatched greedy decoding without generate(): the reference for batched, left-padded generate."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == stop:
                break
            ids.append(nxt)
    return ids[len(prompt):]


# --------------------------------------------------------------------------------------------------
# --from-bos
# --------------------------------------------------------------------------------------------------

def test_from_bos_gives_distinct_texts_and_is_reproducible(model, tmp_path):
    gen = make_generator(model, temperature=1.0, max_new_tokens=32, seed=3)
    summary = rg.regenerate_from_bos(gen, 6, tmp_path / "a.jsonl", batch_size=4)
    records = read_jsonl(tmp_path / "a.jsonl")
    assert [r["id"] for r in records] == [f"bos-{i:05d}" for i in range(6)]
    texts = [r["text"] for r in records]
    assert len(set(texts)) == 6 and all(isinstance(t, str) and t.strip() for t in texts)
    assert not any("</s>" in t or "<s>" in t for t in texts)  # EOS / BOS are not part of the text
    assert summary.generated == 6 and summary.already_done == 0
    # Same seed, same samples (seeds are per batch content, not per process history).
    rg.regenerate_from_bos(make_generator(model, temperature=1.0, max_new_tokens=32, seed=3), 6,
                           tmp_path / "b.jsonl", batch_size=4)
    assert read_jsonl(tmp_path / "b.jsonl") == records


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM whose generate() returns fixed new tokens (prompt echoed first)."""

    def __init__(self, new_tokens: list[list[int]]):
        super().__init__()
        from transformers import GenerationConfig, LlamaConfig

        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = LlamaConfig(vocab_size=512, max_position_embeddings=512)
        self.generation_config = GenerationConfig(eos_token_id=2)
        self.new_tokens = new_tokens

    def generate(self, input_ids, attention_mask, generation_config):
        return torch.cat([input_ids, torch.tensor(self.new_tokens)], dim=1)


def test_generation_ends_at_eos_or_bos_which_are_not_in_the_text():
    """EOS ends a sample; so does BOS (stories260K, like every llama2.c model, ends a story with BOS)."""
    tok = stories260k_tokenizer()
    once, upon = tok("Once upon", add_special_tokens=False)["input_ids"]
    scripted = ScriptedModel([[once, upon, 2, once, once], [upon, 1, once, 0, 0], [once, upon, upon, once, once]])
    gen = rg.Generator(scripted, tok, rg.SamplingSettings(max_new_tokens=5))
    assert gen.stop_ids == [2, 1]
    new = gen._model_generate([[1], [1], [1]], seed="k", settings=gen.settings)  # the lockstep path (with --min-new-tokens)
    assert new == [[once, upon], [upon], [once, upon, upon, once, once]]
    assert gen.hit_max_new_tokens == 1
    assert [tok.decode(ids, skip_special_tokens=True) for ids in new[:2]] == ["Once upon", "upon"]


def test_resumed_run_equals_uninterrupted_run(model, tmp_path):
    """An interrupted run (stopped after its first group) resumed gives exactly the uninterrupted output."""
    full = tmp_path / "full.jsonl"
    rg.regenerate_from_bos(make_generator(model, temperature=1.0, seed=1), 7, full, batch_size=3)

    class Stop(Exception):
        pass

    def stop_after_first_group(n: int) -> None:
        raise Stop

    part = tmp_path / "part.jsonl"
    gen = make_generator(model, temperature=1.0, seed=1)
    with pytest.raises(Stop):
        rg.run_plan(rg.plan_regeneration(rg.bos_jobs(7, gen), part), gen, 3, progress=stop_after_first_group,
                    window_batches=1)
    assert len(read_jsonl(part)) == 3
    summary = rg.regenerate_from_bos(make_generator(model, temperature=1.0, seed=1), 7, part, batch_size=3)
    assert (summary.already_done, summary.generated) == (3, 4)
    assert part.read_text() == full.read_text()


def test_killed_and_restarted_regenerate_has_no_duplicate_or_missing_ids(tmp_path):
    out = tmp_path / "bos.jsonl"
    n = 12
    cmd = [sys.executable, "-m", "eaglespec", "regenerate", "--model", "stories260K", "--from-bos", str(n),
           "--batch-size", "1", "--max-new-tokens", "200", "--min-new-tokens", "200", "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300  # a busy machine: the first window of 4 records must be written before the kill
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    written = out.read_bytes().count(b"\n")
    assert 1 <= written < n
    with open(out, "ab") as f:  # what a kill in the middle of a write would leave
        f.write(b'{"id": "bos-000')
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{written} of {n} records already done" in rerun.stdout
    ids = [r["id"] for r in read_jsonl(out)]  # every line parses
    assert sorted(ids) == [f"bos-{i:05d}" for i in range(n)]  # none missing, none twice


# --------------------------------------------------------------------------------------------------
# Resumable output file
# --------------------------------------------------------------------------------------------------

def test_partial_last_line_is_truncated_on_resume(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "c", "te')
    assert rg.finished_ids(out) == ["a", "b"]
    assert out.read_bytes() == b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n'
    rg.append_records(out, [{"id": "c", "text": "z"}])
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]


def test_output_of_another_run_is_refused(model, tmp_path):
    out = write_jsonl(tmp_path / "o.jsonl", [{"id": "something-else", "text": "x"}])
    with pytest.raises(ValueError, match="ids that are not in this run's input"):
        rg.regenerate_from_bos(make_generator(model), 2, out)
    out.write_text("not json\n")
    with pytest.raises(ValueError, match=r"o.jsonl:1: existing output line is not a record"):
        rg.regenerate_from_bos(make_generator(model), 2, out)


# --------------------------------------------------------------------------------------------------
# Text, chat, FIM
# --------------------------------------------------------------------------------------------------

def test_text_completion_is_the_greedy_continuation(model, tmp_path):
    tok = stories260k_tokenizer()
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "long", "prompt": "Once upon a time, there was a little girl named Lily.", "completion": "x"},
        {"id": "short", "prompt": "Tom", "completion": "y", "extra": 1},
    ])
    rg.regenerate_file(make_generator(model, max_new_tokens=20), src, tmp_path / "o.jsonl", "text", batch_size=2)
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in records] == ["long", "short"] and records[1]["extra"] == 1
    for record in records:
        prompt = tok(record["prompt"])["input_ids"]
        expected = tok.decode(prompt + greedy_reference(model, prompt, 20), skip_special_tokens=True)
        assert record["prompt"] + record["completion"] == expected
    assert records[1]["completion"].startswith(" ")  # the space SentencePiece drops when decoding alone


def test_chat_turns_are_regenerated_in_order_on_the_regenerated_history(model, tmp_path):
    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "sharegpt", "conversations": [
            {"from": "human", "value": "Tell me a story."}, {"from": "gpt", "value": "old 1"},
            {"from": "human", "value": "More."}, {"from": "gpt", "value": "old 2"}]},
        {"id": "openai", "messages": [
            {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Lily"},
            {"role": "assistant", "content": "old"}]},
        {"instruction": "Write", "input": "about a dog", "output": "old"},
    ])
    gen = make_generator(model, max_new_tokens=16, tokenizer=tok)
    rg.regenerate_file(gen, src, tmp_path / "o.jsonl", "chat", batch_size=3)
    sharegpt, openai, alpaca = read_jsonl(tmp_path / "o.jsonl")
    assert alpaca["id"] == "in.jsonl:3" and alpaca["instruction"] == "Write"  # format and fields kept

    def reference(messages):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        return tok.decode(greedy_reference(model, prompt, 16), skip_special_tokens=True).strip()

    turn1 = reference([{"role": "user", "content": "Tell me a story."}])
    turn2 = reference([{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": turn1},
                       {"role": "user", "content": "More."}])
    assert [t["value"] for t in sharegpt["conversations"]] == ["Tell me a story.", turn1, "More.", turn2]
    assert [t["from"] for t in sharegpt["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert openai["messages"][2]["content"] == reference(openai["messages"][:2])
    assert alpaca["output"] == reference([{"role": "user", "content": "Write\n\nabout a dog"}])


def test_chat_without_template_suggests_chat_template(model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "x"}]}])
    with pytest.raises(ValueError, match="--chat-template"):
        rg.regenerate_file(make_generator(model), src, tmp_path / "o.jsonl", "chat")


def test_bad_records_are_reported_with_their_source(model, tmp_path):
    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    gen = make_generator(model, tokenizer=tok)
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "wizard", "content": "hi"}]}])
    with pytest.raises(ValueError, match=r"in.jsonl:1: message 0 has unknown role 'wizard'"):
        rg.build_jobs(src, "chat", gen)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "a", "completion": "b"}] * 2)
    with pytest.raises(ValueError, match=r"in.jsonl:2: duplicate id 'x'"):
        rg.build_jobs(src, "text", gen)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Once upon a time"}])
    with pytest.raises(ValueError, match="--from-bos"):
        rg.build_jobs(src, "text", gen)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        rg.build_jobs(tmp_path / "bad.jsonl", "text", gen)


def test_fim_middle_is_regenerated_with_the_tokenizers_fim_tokens(tmp_path):
    """A tiny random Llama over the real StarCoder vocabulary: the middle is the greedy continuation of
    <fim_prefix>prefix<fim_suffix>suffix<fim_middle>, cut at EOS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(shared_path("tokenizers", "starcoder")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "prefix": "def add(a, b):\n", "middle": "    return a + b\n", "suffix": "\n"},
        {"task_id": "h/1", "prompt": "x = ", "canonical_solution": "1", "suffix": "\nprint(x)\n"},
    ])
    rg.regenerate_file(make_generator(model, max_new_tokens=8, tokenizer=tok), src, tmp_path / "o.jsonl", "fim",
                       batch_size=2)
    first, second = read_jsonl(tmp_path / "o.jsonl")
    assert second["id"] == "h/1" and second["prompt"] == "x = " and second["suffix"] == "\nprint(x)\n"
    vocab = tok.get_vocab()
    for record, prefix, suffix, field in ((first, "def add(a, b):\n", "\n", "middle"),
                                          (second, "x = ", "\nprint(x)\n", "canonical_solution")):
        prompt = ([vocab["<fim_prefix>"]] + tok(prefix, add_special_tokens=False)["input_ids"]
                  + [vocab["<fim_suffix>"]] + tok(suffix, add_special_tokens=False)["input_ids"]
                  + [vocab["<fim_middle>"]])
        new = greedy_reference(model, prompt, 8, stop=tok.eos_token_id)
        assert record[field] == tok.decode(new, skip_special_tokens=True)
    spm = rg.build_jobs(src, "fim", make_generator(model, tokenizer=tok), fim_order="spm")[1].next_prompt()
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert spm == ([vocab["<fim_prefix>"], vocab["<fim_suffix>"]] + encode("\nprint(x)\n")
                   + [vocab["<fim_middle>"]] + encode("x = "))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def test_cli_from_bos_and_chat_template_flag(tmp_path, capsys):
    out = tmp_path / "bos.jsonl"
    assert main(["regenerate", "--model", "stories260K", "--from-bos", "3", "--max-new-tokens", "8",
                 "--output", str(out)]) == 0
    assert len(read_jsonl(out)) == 3 and "wrote 3 records" in capsys.readouterr().out
    template = tmp_path / "t.jinja"
    template.write_text(CHAT_TEMPLATE)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "c", "messages": [{"role": "user", "content": "hi"},
                                                                       {"role": "assistant", "content": "x"}]}])
    assert main(["regenerate", "--model", "stories260K", "--input", str(src), "--data-format", "chat",
                 "--chat-template", str(template), "--max-new-tokens", "8", "--output",
                 str(tmp_path / "c.jsonl")]) == 0
    assert read_jsonl(tmp_path / "c.jsonl")[0]["messages"][1]["content"] != "x"


def test_cli_needs_input_or_from_bos(tmp_path, capsys):
    assert main(["regenerate", "--model", "stories260K", "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "give --input FILE and --data-format chat|fim|text, or --from-bos N, or --sample-chats N" in \
        capsys.readouterr().err


def test_a_record_prepare_would_reject_is_counted_not_written(model, tmp_path, monkeypatch):
    """The recipe regenerate --from-bos -> prepare --data-format text must compose: a sample whose first token
    is EOS (empty text) is not written, and the file prepares without --skip-invalid."""
    from eaglespec.data.prepare import prepare_dataset

    real = rg.Generator.generate

    def first_row_samples_eos(self, prompts, seed_key, ids, batch_size=None, settings=None):
        out = real(self, prompts, seed_key, ids, batch_size, settings)
        return [[] if i == "bos-00001" else new for i, new in zip(ids, out)]

    monkeypatch.setattr(rg.Generator, "generate", first_row_samples_eos)
    gen = make_generator(model, temperature=1.0, max_new_tokens=16, seed=1)
    summary = rg.regenerate_from_bos(gen, 4, tmp_path / "regen.jsonl", batch_size=4)
    assert [r["id"] for r in read_jsonl(tmp_path / "regen.jsonl")] == ["bos-00000", "bos-00002", "bos-00003"]
    assert summary.skipped == {"empty_text": 1}
    assert summary.generated == 3
    stats = prepare_dataset([tmp_path / "regen.jsonl"], "stories260K", tmp_path / "prepared", data_format="text")
    assert stats.kept == 3


def test_prepare_error_names_the_skip_invalid_flag(tmp_path):
    from eaglespec.data.formats import InvalidRecord
    from eaglespec.data.prepare import prepare_dataset

    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Once upon a time"}, {"text": ""}])
    with pytest.raises(InvalidRecord, match=r"in.jsonl:2: .*empty.*--skip-invalid skips such records"):
        prepare_dataset([src], "stories260K", tmp_path / "out", data_format="text")
    stats = prepare_dataset([src], "stories260K", tmp_path / "out", data_format="text", skip_invalid=True)
    assert stats.kept == 1 and stats.skipped == {"empty_text": 1}


def test_continuous_batching_gives_the_greedy_continuation_and_per_record_samples(model):
    tok = stories260k_tokenizer()
    prompts = [tok(p)["input_ids"] for p in ("Once upon a time", "Tom", "The cat sat on the mat and")]
    ids = ["a", "b", "c"]
    greedy = rg.Generator(model, tok, rg.SamplingSettings(max_new_tokens=20, continuous=True))
    assert greedy.generate(prompts, "0", ids, batch_size=2) == [greedy_reference(model, p, 20) for p in prompts]
    sampled = rg.Generator(model, tok, rg.SamplingSettings(max_new_tokens=20, temperature=1.0, seed=4, continuous=True))
    together = sampled.generate(prompts, "0", ids, batch_size=3)
    alone = [sampled.generate([p], "0", [i], batch_size=1)[0] for p, i in zip(prompts, ids)]
    assert together == alone  # a record's sample does not depend on which records share its batch


# --------------------------------------------------------------------------------------------------
# --sample-chats
# --------------------------------------------------------------------------------------------------

def test_sampled_chats_are_a_sampled_user_turn_and_the_greedy_answer_to_it(model, tmp_path):
    from eaglespec.data.chat import ChatEncoder
    from eaglespec.data.prepare import prepare_dataset

    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    gen = make_generator(model, max_new_tokens=12, tokenizer=tok)
    prompt_settings = rg.SamplingSettings(max_new_tokens=10, temperature=1.0, seed=5)
    rg.regenerate_sampled_chats(gen, 4, tmp_path / "a.jsonl", prompt_settings, batch_size=2)
    records = read_jsonl(tmp_path / "a.jsonl")
    assert [r["id"] for r in records] == ["chat-00000", "chat-00001", "chat-00002", "chat-00003"]
    users = [r["conversations"][0]["value"] for r in records]
    assert len(set(users)) == 4 and all(users)  # sampled, not the same greedy text four times
    prefix = tok(tok.bos_token + "user: ", add_special_tokens=False)["input_ids"]
    assert rg.user_turn_prefix(ChatEncoder(tok)) == prefix
    for record, user in zip(records, users):
        messages = [{"role": "user", "content": user}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = greedy_reference(model, tok(text, add_special_tokens=False)["input_ids"], 12)
        assert record["conversations"][1] == {"from": "gpt", "value": tok.decode(answer, skip_special_tokens=True).strip()}
    rg.regenerate_sampled_chats(gen, 4, tmp_path / "b.jsonl", prompt_settings, batch_size=2)
    assert read_jsonl(tmp_path / "b.jsonl") == records  # seeded: a rerun writes the same chats
    (tmp_path / "t.jinja").write_text(CHAT_TEMPLATE)
    stats = prepare_dataset([tmp_path / "a.jsonl"], "stories260K", tmp_path / "prepared", data_format="chat",
                            chat_template=tmp_path / "t.jinja")
    assert stats.kept == 4


def test_user_turn_prefix_keeps_the_templates_default_system_prompt():
    from transformers import AutoTokenizer

    from eaglespec.data.chat import ChatEncoder

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))
    text = tok.decode(rg.user_turn_prefix(ChatEncoder(tok)))
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith("<|im_end|>\n<|im_start|>user\n")


def test_cli_sample_chats_flags_are_checked(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "c", "messages": [{"role": "user", "content": "hi"}]}])
    assert main(["regenerate", "--model", "stories260K", "--sample-chats", "2", "--input", str(src),
                 "--data-format", "chat", "--output", out]) == 1
    assert "--input and --sample-chats: give one of them" in capsys.readouterr().err
    assert main(["regenerate", "--model", "stories260K", "--sample-chats", "2", "--data-format", "fim",
                 "--output", out]) == 1
    assert "--sample-chats writes chat records" in capsys.readouterr().err
    assert main(["regenerate", "--model", "stories260K", "--sample-chats", "2", "--prompt-temperature", "0",
                 "--output", out]) == 1
    assert "--prompt-temperature 0" in capsys.readouterr().err
