"""Reading input files and turning records into examples, with errors that name file:line."""

from __future__ import annotations

import gzip
import json

import pytest

from eaglespec.data.formats import InvalidRecord, Record, parse_conversations, parse_text, read_records
from paths import shared_path


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_json_array_jsonl_gz_and_parquet(tmp_path):
    rows = [{"id": "a", "text": "x"}, {"text": "y"}]
    (tmp_path / "arr.json").write_text(json.dumps(rows))
    _jsonl(tmp_path / "lines.jsonl", rows)
    with gzip.open(tmp_path / "lines.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    _jsonl(tmp_path / "lines_named.json", rows)  # JSON Lines under a .json name
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("arr.json", "lines.jsonl", "lines.jsonl.gz", "lines_named.json", "rows.parquet"):
        records = read_records(tmp_path / name).records
        assert [r.data["text"] for r in records] == ["x", "y"], name
        assert records[0].id == "a"
    lines = read_records(tmp_path / "lines.jsonl").records
    assert lines[1].source == f"{tmp_path / 'lines.jsonl'}:2" and lines[1].id == "lines.jsonl:2"


def test_malformed_json_line_names_file_line_and_reason(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, '{"text": "broken', {"text": "ok"}])
    with pytest.raises(InvalidRecord, match=rf"{path}:2: invalid JSON: Unterminated string starting at \(column 10\)"):
        read_records(path)
    result = read_records(path, skip_invalid=True)
    assert len(result.records) == 2 and [e.reason for e in result.invalid] == ["invalid_json"]
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(InvalidRecord, match=r"bad.json:2: invalid JSON: Expecting value \(column 11\); a JSON "
                                            r"array cannot be partly skipped"):
        read_records(tmp_path / "bad.json", skip_invalid=True)


def test_missing_input_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: input file not found"):
        read_records(tmp_path / "nope.jsonl")


def _conv(data: dict, source: str = "c.jsonl:4"):
    return parse_conversations(Record(source, "r", data))


def test_sharegpt_openai_alpaca_and_tool_calls():
    (share,) = _conv({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": " Q "},
                                        {"from": "gpt", "value": "A\n"}, {"from": "human", "value": "dangling"}]})
    assert share.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "A"}]  # stripped; trailing user turn dropped
    (openai,) = _conv({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                    {"role": "assistant", "content": "yo"}]})
    assert openai.messages[0] == {"role": "user", "content": "hi"}
    (alpaca,) = _conv({"instruction": "Sum", "input": "1 2", "output": "3"})
    assert alpaca.messages == [{"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}]
    (tool,) = _conv({"conversations": [
        {"from": "human", "value": "q"},
        {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
        {"from": "observation", "value": "{\"y\": 2}"}, {"from": "gpt", "value": "2"}],
        "tools": '[{"name": "f", "parameters": {}}]'})
    call = tool.messages[1]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert len(call["tool_calls"][0]["id"]) == 9 and tool.messages[2]["tool_call_id"] == call["tool_calls"][0]["id"]
    assert tool.messages[2]["role"] == "tool"
    assert tool.tools == [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def test_open_assistant_tree_gives_one_conversation_per_leaf():
    path = shared_path("data", "train", "oasst_en_100_tree.jsonl")
    tree = json.loads(path.read_text().splitlines()[0])

    def leaves(node):
        replies = [r for r in node["replies"] if not r.get("deleted")]
        return sum(leaves(r) for r in replies) if replies else 1

    convs = parse_conversations(Record(f"{path}:1", tree["message_tree_id"], tree))
    assert len(convs) == leaves(tree["prompt"]) > 1
    assert len({c.id for c in convs}) == len(convs)
    for conv in convs:
        assert conv.messages[0] == {"role": "user", "content": tree["prompt"]["text"].strip()}
        assert [m["role"] for m in conv.messages][1::2] == ["assistant"] * (len(conv.messages) // 2)


@pytest.mark.parametrize("data,message,reason", [
    ({"conversations": [{"from": "robot", "value": "x"}]},
     r"c.jsonl:4: message 0 has unknown role 'robot'; expected one of \[", "unknown_role"),
    ({"conversations": [{"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "x"}]},
     r"c.jsonl:4: conversation starts with a message from the assistant", "starts_with_assistant"),
    ({"conversations": [{"from": "human"}]}, r"c.jsonl:4: message 0 has no field 'value'", "missing_field"),
    ({"conversations": [{"from": "human", "value": 3}]},
     r"field 'value' of the message 0 must be a string, got int", "invalid_field"),
    ({"dialog": []}, r"c.jsonl:4: not a chat record: .*got fields \['dialog'\]", "missing_field"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]},
     r"system message at position 1", "misplaced_system"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
     r"message 1 \(assistant\) is empty", "empty_message"),
    ({"instruction": "do"}, r"c.jsonl:4: record has no field 'output'", "missing_field"),
])
def test_bad_chat_records(data, message, reason):
    with pytest.raises(InvalidRecord, match=message) as e:
        _conv(data)
    assert e.value.reason == reason


def test_text_records():
    assert parse_text(Record("t", "i", {"text": "abc"})).prompt is None
    example = parse_text(Record("t", "i", {"prompt": "p", "completion": "c"}))
    assert (example.prompt, example.completion) == ("p", "c")
    with pytest.raises(InvalidRecord, match=r"t: not a text record: expected 'text' or 'prompt'\+'completion'"):
        parse_text(Record("t", "i", {"body": "x"}))


def test_json_lines_split_at_newline_only(tmp_path):
    """U+2028 / U+0085 may stand unescaped inside a JSON string (gsm8k_train.jsonl has them): one record, not a
    record cut in two and an 'invalid JSON' error."""
    text = "first\u2028second\u0085third"
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\r\n" + json.dumps({"text": "y"})
                    + "\n", encoding="utf-8")
    records = read_records(path).records
    assert [r.data["text"] for r in records] == [text, "y"]
