"""Self-distillation: `eaglespec regenerate` on the bundled stories260K (from BOS, text, chat, FIM) plus
resume after a SIGKILL, partial-line repair and bad input. Records are written as they complete, so tests that
compare files read them ordered by id (`read_by_id`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from distill_helpers import (
    CHAT_TEMPLATE,
    greedy_reference,
    make_generator,
    options,
    read_by_id,
    read_jsonl,
    write_jsonl,
)
from fixtures import stories260k, stories260k_tokenizer
from paths import shared_path

from eaglespec import distill as rg
from eaglespec.cli import main
from eaglespec.decoding import GenerationOptions
from eaglespec.distill.jobs import BosJob, JobPrompt, user_turn_prefix
from eaglespec.distill.local import LocalEngine, cut_at_stop, stop_token_ids
from eaglespec.distill.resume import append_records, finished_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return stories260k()


def complete(generator, prompts: list[list[int]], ids: list[str], opts: GenerationOptions, batch_size: int):
    """The local engine's completions of `prompts` (token ids cut before the stop token), in prompt order."""
    engine = LocalEngine(generator, opts, batch_size)
    for key, (prompt, record_id) in enumerate(zip(prompts, ids)):
        engine.submit(key, JobPrompt(prompt, f"0:{record_id}"), record_id)
    done = {}
    while engine.in_flight:
        done.update(engine.collect())
    return [done[key].token_ids for key in range(len(prompts))]


# --------------------------------------------------------------------------------------------------
# --from-bos
# --------------------------------------------------------------------------------------------------

def test_from_bos_gives_distinct_texts_and_is_reproducible(model, tmp_path):
    summary = rg.regenerate_from_bos(make_generator(model), 6, tmp_path / "a.jsonl",
                                     options(temperature=1.0, max_new_tokens=32, seed=3), batch_size=4)
    records = read_by_id(tmp_path / "a.jsonl")
    assert [r["id"] for r in records] == [f"bos-{i:05d}" for i in range(6)]
    texts = [r["text"] for r in records]
    assert len(set(texts)) == 6 and all(isinstance(t, str) and t.strip() for t in texts)
    assert not any("</s>" in t or "<s>" in t for t in texts)  # EOS / BOS are not part of the text
    assert summary.generated == 6 and summary.already_done == 0
    # Same seed, same samples (seeds are per record, not per process history or batch).
    rg.regenerate_from_bos(make_generator(model), 6, tmp_path / "b.jsonl",
                           options(temperature=1.0, max_new_tokens=32, seed=3), batch_size=2)
    assert read_by_id(tmp_path / "b.jsonl") == records


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: only its generation_config (the EOS ids it names) is read."""

    def __init__(self):
        super().__init__()
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(eos_token_id=2)


def test_generation_ends_at_eos_or_bos_which_are_not_in_the_text():
    """EOS ends a sample; so does BOS (stories260K, like every llama2.c model, ends a story with BOS)."""
    tok = stories260k_tokenizer()
    once, upon = tok("Once upon", add_special_tokens=False)["input_ids"]
    stop_ids = stop_token_ids(ScriptedModel(), tok)
    assert stop_ids == [2, 1]
    outputs = [[once, upon, 2, once, once], [upon, 1, once, 0, 0], [once, upon, upon, once, once]]
    completions = [cut_at_stop(ids, stop_ids, tok) for ids in outputs]  # what the engine makes of each output
    new = [c.token_ids for c in completions]
    assert new == [[once, upon], [upon], [once, upon, upon, once, once]]
    assert sum(c.hit_limit for c in completions) == 1
    assert [c.text for c in completions[:2]] == ["Once upon", "upon"]
    assert [tok.decode(ids, skip_special_tokens=True) for ids in new[:2]] == ["Once upon", "upon"]


def test_resumed_run_equals_uninterrupted_run(model, tmp_path):
    """An interrupted run (stopped after its first group) resumed gives exactly the uninterrupted output."""
    """An interrupted run (stopped once its first records are written) resumed gives exactly the uninterrupted
    output, although the resumed run shares its batches with other records than the first run did."""
    full = tmp_path / "full.jsonl"
    gen, opts = make_generator(model), options(temperature=1.0, seed=1)
    rg.regenerate_from_bos(gen, 7, full, opts, batch_size=3)

    class Stop(Exception):
        pass

    written = []

    def stop_after_first_records(n: int) -> None:
        written.append(n)
        raise Stop

    part = tmp_path / "part.jsonl"
    engine = LocalEngine(gen, opts, 3)
    with pytest.raises(Stop):
        rg.run_plan(rg.plan_regeneration(rg.bos_jobs(7, gen.tokenizer), part), engine,
                    progress=stop_after_first_records)
    assert len(read_jsonl(part)) == written[0] and 1 <= written[0] < 7
    summary = rg.regenerate_from_bos(gen, 7, part, opts, batch_size=3)
    assert (summary.already_done, summary.generated) == (written[0], 7 - written[0])
    assert read_by_id(part) == read_by_id(full)


def test_killed_and_restarted_regenerate_has_no_duplicate_or_missing_ids(tmp_path):
    out = tmp_path / "bos.jsonl"
    n = 40  # at batch size 1, long enough to be killed after the first record and well before the last
    cmd = [sys.executable, "-m", "eaglespec", "regenerate", "--model", "stories260K", "--from-bos", str(n),
           "--batch-size", "1", "--max-new-tokens", "200", "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300  # a busy machine: the first record must be written before the kill
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
    faster = cmd[: cmd.index("--batch-size")] + ["--batch-size", "20"] + cmd[cmd.index("--batch-size") + 2:]
    rerun = subprocess.run(faster, capture_output=True, text=True, env=env, timeout=300)  # records seeded per id
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
    assert finished_ids(out) == ["a", "b"]
    assert out.read_bytes() == b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n'
    append_records(out, [{"id": "c", "text": "z"}])
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]


def test_output_of_another_run_is_refused(model, tmp_path):
    out = write_jsonl(tmp_path / "o.jsonl", [{"id": "something-else", "text": "x"}])
    with pytest.raises(ValueError, match="ids that are not in this run's input"):
        rg.regenerate_from_bos(make_generator(model), 2, out, options())
    out.write_text("not json\n")
    with pytest.raises(ValueError, match=r"o.jsonl:1: existing output line is not a record"):
        rg.regenerate_from_bos(make_generator(model), 2, out, options())


# --------------------------------------------------------------------------------------------------
# Text, chat, FIM
# --------------------------------------------------------------------------------------------------

def test_text_completion_is_the_greedy_continuation(model, tmp_path):
    tok = stories260k_tokenizer()
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "long", "prompt": "Once upon a time, there was a little girl named Lily.", "completion": "x"},
        {"id": "short", "prompt": "Tom", "completion": "y", "extra": 1},
    ])
    rg.regenerate_file(make_generator(model), src, tmp_path / "o.jsonl", "text", options(max_new_tokens=20),
                       batch_size=2)
    records = read_by_id(tmp_path / "o.jsonl")
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
    gen = make_generator(model, tokenizer=tok)
    rg.regenerate_file(gen, src, tmp_path / "o.jsonl", "chat", options(max_new_tokens=16), batch_size=3)
    by_id = {r["id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
    sharegpt, openai, alpaca = by_id["sharegpt"], by_id["openai"], by_id["in.jsonl:3"]
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
        rg.regenerate_file(make_generator(model), src, tmp_path / "o.jsonl", "chat", options())


def test_bad_records_are_reported_with_their_source(model, tmp_path):
    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "wizard", "content": "hi"}]}])
    with pytest.raises(ValueError, match=r"in.jsonl:1: message 0 has unknown role 'wizard'"):
        rg.file_jobs(src, "chat", tok)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "a", "completion": "b"}] * 2)
    with pytest.raises(ValueError, match=r"in.jsonl:2: duplicate id 'x'"):
        rg.file_jobs(src, "text", tok)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Once upon a time"}])
    with pytest.raises(ValueError, match="--from-bos"):
        rg.file_jobs(src, "text", tok)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        rg.file_jobs(tmp_path / "bad.jsonl", "text", tok)


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
    rg.regenerate_file(make_generator(model, tokenizer=tok), src, tmp_path / "o.jsonl", "fim",
                       options(max_new_tokens=8), batch_size=2)
    first, second = read_by_id(tmp_path / "o.jsonl")
    assert second["id"] == "h/1" and second["prompt"] == "x = " and second["suffix"] == "\nprint(x)\n"
    vocab = tok.get_vocab()
    for record, prefix, suffix, field in ((first, "def add(a, b):\n", "\n", "middle"),
                                          (second, "x = ", "\nprint(x)\n", "canonical_solution")):
        prompt = ([vocab["<fim_prefix>"]] + tok(prefix, add_special_tokens=False)["input_ids"]
                  + [vocab["<fim_suffix>"]] + tok(suffix, add_special_tokens=False)["input_ids"]
                  + [vocab["<fim_middle>"]])
        new = greedy_reference(model, prompt, 8, stop=tok.eos_token_id)
        assert record[field] == tok.decode(new, skip_special_tokens=True)
    spm = rg.file_jobs(src, "fim", tok, fim_order="spm").jobs[1].next_prompt().token_ids
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

    real = BosJob.fill

    def second_record_samples_eos(self, completion):
        real(self, rg.Completion("", [], False) if self.id == "bos-00001" else completion)

    monkeypatch.setattr(BosJob, "fill", second_record_samples_eos)
    summary = rg.regenerate_from_bos(make_generator(model), 4, tmp_path / "regen.jsonl",
                                     options(temperature=1.0, max_new_tokens=16, seed=1), batch_size=4)
    assert [r["id"] for r in read_by_id(tmp_path / "regen.jsonl")] == ["bos-00000", "bos-00002", "bos-00003"]
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
    gen = make_generator(model, tokenizer=tok)
    greedy = complete(gen, prompts, ids, options(max_new_tokens=20), batch_size=2)
    assert greedy == [greedy_reference(model, p, 20) for p in prompts]
    sampled = options(max_new_tokens=20, temperature=1.0, seed=4)
    together = complete(gen, prompts, ids, sampled, batch_size=3)
    alone = [complete(gen, [p], [i], sampled, batch_size=1)[0] for p, i in zip(prompts, ids)]
    assert together == alone  # a record's sample does not depend on which records share its batch


# --------------------------------------------------------------------------------------------------
# --sample-chats
# --------------------------------------------------------------------------------------------------

def test_sampled_chats_are_a_sampled_user_turn_and_the_greedy_answer_to_it(model, tmp_path):
    from eaglespec.data.chat import ChatEncoder
    from eaglespec.data.prepare import prepare_dataset

    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    gen = make_generator(model, tokenizer=tok)
    user_options = options(max_new_tokens=10, temperature=1.0, seed=5)
    rg.regenerate_sampled_chats(gen, 4, tmp_path / "a.jsonl", options(max_new_tokens=12), user_options, batch_size=2)
    records = read_by_id(tmp_path / "a.jsonl")
    assert [r["id"] for r in records] == ["chat-00000", "chat-00001", "chat-00002", "chat-00003"]
    users = [r["conversations"][0]["value"] for r in records]
    assert len(set(users)) == 4 and all(users)  # sampled, not the same greedy text four times
    prefix = tok(tok.bos_token + "user: ", add_special_tokens=False)["input_ids"]
    assert user_turn_prefix(ChatEncoder(tok)) == prefix
    for record, user in zip(records, users):
        messages = [{"role": "user", "content": user}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = greedy_reference(model, tok(text, add_special_tokens=False)["input_ids"], 12)
        assert record["conversations"][1] == {"from": "gpt", "value": tok.decode(answer, skip_special_tokens=True).strip()}
    rg.regenerate_sampled_chats(gen, 4, tmp_path / "b.jsonl", options(max_new_tokens=12), user_options, batch_size=3)
    assert read_by_id(tmp_path / "b.jsonl") == records  # seeded: a rerun writes the same chats
    (tmp_path / "t.jinja").write_text(CHAT_TEMPLATE)
    stats = prepare_dataset([tmp_path / "a.jsonl"], "stories260K", tmp_path / "prepared", data_format="chat",
                            chat_template=tmp_path / "t.jinja")
    assert stats.kept == 4


def test_user_turn_prefix_keeps_the_templates_default_system_prompt():
    from transformers import AutoTokenizer

    from eaglespec.data.chat import ChatEncoder

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))
    text = tok.decode(user_turn_prefix(ChatEncoder(tok)))
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


def test_finished_ids_split_lines_at_newline_only(tmp_path):
    """An answer holding U+2028 (allowed unescaped in JSON) is one line of the output, not two broken ones."""
    out = tmp_path / "out.jsonl"
    append_records(out, [{"id": "a", "text": "x\u2028y"}, {"id": "b", "text": "z"}])
    out.write_text(out.read_text(encoding="utf-8").replace("\\u2028", "\u2028"), encoding="utf-8")
    assert "\u2028" in out.read_text(encoding="utf-8")
    assert finished_ids(out) == ["a", "b"]
