"""Acceptance 2 and 4: `prepare` on the real chat files with a real tokenizer writes correct stats.json
(checked against an independent count), and every bad input is refused with a message naming it."""

from __future__ import annotations

import json
import os

import datasets
import pytest

from eaglespec.data import load_prepared, prepare_dataset
from eaglespec.data.prepare import SampleEncoder, load_stats
from eaglespec.models import bundled_model_path
from paths import shared_path

HUGE = 1_000_000  # a max_len nothing reaches: no truncation


def _qwen():
    return str(shared_path("tokenizers", "qwen2.5"))


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _expected_sharegpt(tokenizer, records) -> tuple[int, list[int]]:
    """trained tokens (answer + <|im_end|> per turn) and the full lengths (the last '\n' is not kept)."""
    trained, lengths = 0, []
    for record in records:
        msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].strip()}
                for t in record["conversations"]]
        trained += sum(_n_tokens(tokenizer, m["content"]) + 1 for m in msgs if m["role"] == "assistant")
        lengths.append(_n_tokens(tokenizer, tokenizer.apply_chat_template(msgs, tokenize=False)) - 1)
    return trained, lengths


def test_sharegpt_stats_match_an_independent_count(tmp_path, real_tokenizer):
    path = shared_path("data", "train", "sharegpt_sample_50_longprompt.json")
    records = json.loads(path.read_text())
    trained, lengths = _expected_sharegpt(real_tokenizer("qwen2.5"), records)
    stats = prepare_dataset([path], _qwen(), tmp_path / "out", data_format="chat", max_len=HUGE)
    assert stats == load_stats(tmp_path / "out")
    assert (stats.read, stats.samples, stats.kept, stats.skipped, stats.truncated) == (50, 50, 50, {}, 0)
    assert (stats.total_tokens, stats.trained_tokens) == (sum(lengths), trained)
    dataset, meta = load_prepared(tmp_path / "out")
    assert dataset.column_names == ["id", "input_ids", "loss_mask"] and len(dataset) == 50
    assert [len(x) for x in dataset["input_ids"]] == lengths
    assert meta.data_format == "chat" and meta.max_len == HUGE and len(meta.tokenizer_hash) == 64
    assert meta.inputs[0]["sha256"] and meta.inputs[0]["path"].endswith("sharegpt_sample_50_longprompt.json")

    limit = sorted(lengths)[len(lengths) // 2]
    short = prepare_dataset([path], _qwen(), tmp_path / "short", max_len=limit)
    prompt_lengths = [len(x) - sum(m) for x, m in zip(dataset["input_ids"], dataset["loss_mask"])]
    no_answer_within = sum(p >= limit for p in prompt_lengths)  # single-turn: the prompt precedes the answer
    assert short.skipped == ({"no_trained_tokens_within_max_len": no_answer_within} if no_answer_within else {})
    assert short.truncated == sum(n > limit for n, p in zip(lengths, prompt_lengths) if p < limit) > 0
    assert short.total_tokens == sum(min(n, limit) for n, p in zip(lengths, prompt_lengths) if p < limit)


def test_glaive_tool_calls_stats(tmp_path, real_tokenizer):
    tokenizer = real_tokenizer("qwen2.5")
    path = shared_path("data", "train", "llamafactory_glaive_toolcall_en_demo.json")
    records = json.loads(path.read_text())
    trained = 0
    for record in records:
        for turn in record["conversations"]:
            if turn["from"] == "gpt":
                trained += _n_tokens(tokenizer, turn["value"].strip()) + 1
            elif turn["from"] == "function_call":  # Qwen's template: <tool_call>\n{"name": .., "arguments": ..}
                call = json.loads(turn["value"])
                text = ('<tool_call>\n{"name": "' + call["name"] + '", "arguments": '
                        + json.dumps(call["arguments"], ensure_ascii=False) + "}\n</tool_call>")
                trained += _n_tokens(tokenizer, text) + 1
    stats = prepare_dataset([path], _qwen(), tmp_path / "out", max_len=HUGE)
    assert (stats.read, stats.samples, stats.kept, stats.skipped) == (300, 300, 300, {})
    assert stats.trained_tokens == trained


def test_oasst_stats(tmp_path, real_tokenizer):
    tokenizer = real_tokenizer("qwen2.5")
    path = shared_path("data", "train", "oasst_en_100_tree.jsonl")
    trees = [json.loads(line) for line in path.read_text().splitlines()]
    paths: list[list[dict]] = []

    def walk(node, prefix):
        if node.get("deleted"):
            return
        prefix = prefix + [node]
        replies = [r for r in node["replies"] if not r.get("deleted")]
        if not replies:
            paths.append(prefix)
        for reply in replies:
            walk(reply, prefix)

    for tree in trees:
        walk(tree["prompt"], [])
    trained = sum(_n_tokens(tokenizer, m["text"].strip()) + 1 for p in paths for m in p if m["role"] == "assistant")
    without_answer = sum(1 for p in paths if all(m["role"] != "assistant" for m in p))
    stats = prepare_dataset([path], _qwen(), tmp_path / "out", max_len=HUGE)
    assert (stats.read, stats.samples) == (100, len(paths))
    assert stats.kept == len(paths) - without_answer
    assert stats.skipped == ({"no_trained_tokens": without_answer} if without_answer else {})
    assert stats.trained_tokens == trained
    dataset, _ = load_prepared(tmp_path / "out")
    assert stats.total_tokens == sum(len(x) for x in dataset["input_ids"])
    assert stats.trained_tokens == sum(sum(m) for m in dataset["loss_mask"])


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


STORIES = str(bundled_model_path())


def test_text_format_with_stories260k(tmp_path):
    inp = _jsonl(tmp_path / "t.jsonl", [{"id": "plain", "text": "Once upon a time"},
                                        {"id": "pc", "prompt": "Once upon a time", "completion": ", there was"}])
    stats = prepare_dataset(inp, "stories260K", tmp_path / "out", data_format="text")
    dataset, meta = load_prepared(tmp_path / "out")
    plain, pc = dataset[0], dataset[1]
    assert plain["input_ids"] == [1, 403, 407, 261, 378] and plain["loss_mask"] == [0, 1, 1, 1, 1]  # no BOS loss
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    full = tokenizer("Once upon a time, there was")["input_ids"]
    assert pc["input_ids"] == full + [2]  # EOS appended so drafts learn to stop
    assert pc["loss_mask"] == [0] * 5 + [1] * (len(full) - 5 + 1)
    assert tokenizer.decode([t for t, m in zip(pc["input_ids"], pc["loss_mask"]) if m]) == ", there was</s>"
    assert stats.trained_tokens == 4 + len(full) - 5 + 1 and meta.tokenizer == "stories260K"


def test_fim_prepare_on_humaneval_infilling(tmp_path):
    path = shared_path("data", "fim", "HumanEval-RandomSpanInfillingLight.jsonl.gz")
    stats = prepare_dataset(path, str(shared_path("tokenizers", "starcoder")), tmp_path / "out", data_format="fim")
    dataset, meta = load_prepared(tmp_path / "out")
    assert stats.read == stats.kept == len(dataset) == 164
    assert meta.fim_tokens["family"] == "starcoder" and dataset[0]["id"] == "RandomSpanInfillingLight/HumanEval/0/1"


# ---------------------------------------------------------------------------------------------------
# Bad input through the whole pipeline
# ---------------------------------------------------------------------------------------------------

def test_malformed_line_stops_or_is_skipped_and_counted(tmp_path):
    inp = _jsonl(tmp_path / "c.jsonl", [{"text": "Once upon a time"}, "{not json", {"text": "The end"}])
    with pytest.raises(ValueError, match=rf"{inp}:2: invalid JSON: Expecting property name"):
        prepare_dataset(inp, STORIES, tmp_path / "out", data_format="text")
    assert not (tmp_path / "out").exists()
    stats = prepare_dataset(inp, STORIES, tmp_path / "out", data_format="text", skip_invalid=True)
    assert (stats.read, stats.kept, stats.skipped) == (3, 2, {"invalid_json": 1})


def test_bad_records_name_their_line_and_can_be_skipped(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                               {"from": "gpt", "value": "c"}]},  # breaks Llama-2's alternation
            {"conversations": [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "x"}]},
            {"conversations": [{"from": "alien", "value": "x"}]},
            {"conversations": [{"from": "human", "value": "only a question"}]}]
    inp = _jsonl(tmp_path / "c.jsonl", rows)
    llama2 = str(shared_path("tokenizers", "llama2"))
    with pytest.raises(ValueError, match=rf"{inp}:3: conversation starts with a message from the assistant"):
        prepare_dataset(inp, llama2, tmp_path / "out")
    stats = prepare_dataset(inp, llama2, tmp_path / "out", skip_invalid=True)
    assert stats.kept == 1
    assert stats.skipped == {"starts_with_assistant": 1, "unknown_role": 1, "template_error": 1,
                             "no_trained_tokens": 1}
    del rows[2:4]
    inp = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{inp}:2: the chat template rejected conversation 'd.jsonl:2': "
                                         r"TemplateError: Conversation roles must alternate"):
        prepare_dataset(inp, llama2, tmp_path / "out2")


def test_every_sample_empty_is_an_error(tmp_path):
    inp = _jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "human", "value": "q"}]}])
    with pytest.raises(ValueError, match=r"no sample has a trained token .*'no_trained_tokens': 1"):
        prepare_dataset(inp, _qwen(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_chat_template_and_fim_tokens(tmp_path):
    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}])
    starcoder = str(shared_path("tokenizers", "starcoder"))
    with pytest.raises(ValueError, match=r"starcoder has no chat template; pass one with --chat-template FILE"):
        prepare_dataset(chat, starcoder, tmp_path / "out")
    template = shared_path("tokenizers", "templates", "starcoder2-15b-instruct.hf.jinja")
    assert prepare_dataset(chat, starcoder, tmp_path / "out", chat_template=template).kept == 1
    assert load_prepared(tmp_path / "out")[1].chat_template_sha256
    fim = _jsonl(tmp_path / "f.jsonl", [{"prefix": "a", "middle": "b", "suffix": "c"}])
    with pytest.raises(ValueError, match=r"llama2 has no FIM tokens of a known family"):
        prepare_dataset(fim, str(shared_path("tokenizers", "llama2")), tmp_path / "fim", data_format="fim")
    empty = _jsonl(tmp_path / "e.jsonl", [{"prefix": "a", "middle": "", "suffix": "c"}])
    with pytest.raises(ValueError, match=rf"{empty}:1: empty middle"):
        prepare_dataset(empty, starcoder, tmp_path / "fim", data_format="fim")


def test_refuses_an_output_holding_another_dataset_unless_overwrite(tmp_path):
    inp = _jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time"}])
    other = _jsonl(tmp_path / "u.jsonl", [{"text": "The end"}, {"text": "Lily"}])
    prepare_dataset(inp, STORIES, tmp_path / "out", data_format="text")
    with pytest.raises(FileExistsError, match=r"out: holds another prepared dataset; .*--overwrite"):
        prepare_dataset(other, STORIES, tmp_path / "out", data_format="text")
    assert len(load_prepared(tmp_path / "out")[0]) == 1
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="junk: exists and is not empty"):
        prepare_dataset(other, STORIES, tmp_path / "junk", data_format="text")
    prepare_dataset(other, STORIES, tmp_path / "out", data_format="text", overwrite=True)
    assert len(load_prepared(tmp_path / "out")[0]) == 2


@pytest.mark.parametrize("stage", ["encoding", "saving"])
def test_interrupted_run_leaves_nothing_loadable(tmp_path, monkeypatch, stage):
    inp = _jsonl(tmp_path / "t.jsonl", [{"text": f"Once upon a time {i}"} for i in range(5)])
    if stage == "encoding":
        calls = []
        original = SampleEncoder.__call__

        def interrupted(self, example):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return original(self, example)

        monkeypatch.setattr(SampleEncoder, "__call__", interrupted)
    else:
        original_save = datasets.Dataset.save_to_disk

        def interrupted(self, path, **kwargs):
            original_save(self, path, **kwargs)  # the data is fully written, the meta file is not
            raise KeyboardInterrupt

        monkeypatch.setattr(datasets.Dataset, "save_to_disk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(inp, STORIES, tmp_path / "out", data_format="text")
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match=r"out: not a prepared dataset \(no prepare_meta.json\)"):
        load_prepared(tmp_path / "out")


def test_num_proc_gives_the_same_dataset(tmp_path):
    inp = _jsonl(tmp_path / "t.jsonl", [{"text": f"Once upon a time there was a cat number {i}."} for i in range(40)]
                 + ["{broken"])
    one = prepare_dataset(inp, STORIES, tmp_path / "one", data_format="text", skip_invalid=True)
    two = prepare_dataset(inp, STORIES, tmp_path / "two", data_format="text", skip_invalid=True, num_proc=2)
    assert one == two
    assert load_prepared(tmp_path / "one")[0].to_dict() == load_prepared(tmp_path / "two")[0].to_dict()
