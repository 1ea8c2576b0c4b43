"""Read training records from JSON / JSON Lines (optionally .gz) or anything `datasets.load_dataset` reads
locally, and turn them into examples: chat conversations, FIM triples or texts.

Every record carries its `source` ("file:line" for JSON Lines, "file[index]" for arrays) so that every
error names where the bad input is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Extensions `datasets.load_dataset` reads with a packaged builder (extension -> builder name).
DATASETS_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow", ".txt": "text"}
# Fields a record's id is taken from, in order; without one the id is "<file name>:<line or index>".
ID_FIELDS = ("id", "conversation_id", "task_id", "message_tree_id", "question_id")

USER, ASSISTANT, SYSTEM, TOOL = "user", "assistant", "system", "tool"
TOOL_CALL = "function_call"  # ShareGPT-style role of an assistant turn that calls a tool
ROLE_ALIASES = {
    "human": USER, "user": USER, "prompter": USER,
    "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT, "model": ASSISTANT, "bard": ASSISTANT,
    "system": SYSTEM,
    "function_call": TOOL_CALL, "tool_call": TOOL_CALL,
    "observation": TOOL, "tool": TOOL, "function": TOOL, "ipython": TOOL,
}


class InvalidRecord(ValueError):
    """A record that cannot become a training sample. `reason` is the short key counted in stats.json."""

    def __init__(self, message: str, reason: str = "invalid_record"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` when the error crosses a process boundary (--num-proc)
        return (InvalidRecord, (str(self), self.reason))


@dataclass
class Record:
    """One JSON object read from an input file."""

    source: str  # "file:line" or "file[index]"
    id: str
    data: dict


@dataclass
class Conversation:
    """A chat in the Hugging Face message format (`role`, `content`, optional `tool_calls`)."""

    id: str
    source: str
    messages: list[dict]
    tools: list[dict] | None = None


@dataclass
class FimExample:
    id: str
    source: str
    prefix: str
    middle: str
    suffix: str


@dataclass
class TextExample:
    """`prompt` None: a plain text, every token trained. Otherwise only `completion` (+ EOS) is trained."""

    id: str
    source: str
    completion: str
    prompt: str | None = None


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    invalid: list[InvalidRecord] = field(default_factory=list)  # lines skipped under skip_invalid


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------

def read_records(path: str | os.PathLike, skip_invalid: bool = False) -> ReadResult:
    """All records of one input file. Malformed JSON lines raise InvalidRecord naming file:line and the
    parser's reason, or are collected in `invalid` when skip_invalid."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input file not found")
    inner = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(inner).suffix.lower()
    if path.is_dir() or suffix in DATASETS_BUILDERS:
        return ReadResult(records=_read_with_datasets(path, suffix))
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            return ReadResult(records=_records_from_json(path, json.loads(text)))
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data" = several objects, i.e. JSON Lines named .json
                raise InvalidRecord(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno}); a JSON "
                                    "array cannot be partly skipped, fix the file", "invalid_json") from e
    return _read_json_lines(path, text, skip_invalid)


def _records_from_json(path: Path, value: Any) -> list[Record]:
    items = value if isinstance(value, list) else [value]
    records = []
    for index, item in enumerate(items):
        source = f"{path}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRecord(f"{source}: expected a JSON object, got {type(item).__name__}")
        records.append(Record(source, _record_id(item, f"{path.name}:{index}"), item))
    return records


def _read_json_lines(path: Path, text: str, skip_invalid: bool) -> ReadResult:
    result = ReadResult()
    # JSON Lines end at "\n" only: str.splitlines() would also split inside strings at U+2028, U+0085, ...,
    # which JSON allows unescaped (seen in gsm8k_train.jsonl)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        source = f"{path}:{lineno}"
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise InvalidRecord(f"{source}: expected a JSON object, got {type(item).__name__}")
        except json.JSONDecodeError as e:
            error = InvalidRecord(f"{source}: invalid JSON: {e.msg} (column {e.colno})", "invalid_json")
            if not skip_invalid:
                raise error from e
            result.invalid.append(error)
            continue
        except InvalidRecord as error:
            if not skip_invalid:
                raise
            result.invalid.append(error)
            continue
        result.records.append(Record(source, _record_id(item, f"{path.name}:{lineno}"), item))
    return result


def _read_with_datasets(path: Path, suffix: str) -> list[Record]:
    import datasets

    if path.is_dir():
        ds = datasets.load_dataset(str(path), split="train")
    else:
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        ds = datasets.load_dataset(DATASETS_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    return [Record(f"{path}[{i}]", _record_id(row, f"{path.name}:{i}"), row) for i, row in enumerate(ds)]


def _record_id(item: dict, default: str) -> str:
    for key in ID_FIELDS:
        if isinstance(item.get(key), (str, int)):
            return str(item[key])
    return default


# ---------------------------------------------------------------------------------------------------
# Field access
# ---------------------------------------------------------------------------------------------------

def get_str(data: dict, key: str, source: str, what: str = "record", allow_empty: bool = True) -> str:
    """`data[key]` as a string, or InvalidRecord naming the source, the field and what was found."""
    if key not in data or data[key] is None:
        raise InvalidRecord(f"{source}: {what} has no field {key!r} (fields: {sorted(data)})", "missing_field")
    value = data[key]
    if not isinstance(value, str):
        raise InvalidRecord(f"{source}: field {key!r} of the {what} must be a string, got {type(value).__name__}",
                            "invalid_field")
    if not allow_empty and not value.strip():
        raise InvalidRecord(f"{source}: field {key!r} of the {what} is empty", f"empty_{key}")
    return value


# ---------------------------------------------------------------------------------------------------
# Chat records -> conversations
# ---------------------------------------------------------------------------------------------------

def parse_conversations(record: Record) -> list[Conversation]:
    """ShareGPT, OpenAI messages, Alpaca or an Open-Assistant tree (one conversation per root-to-leaf path)."""
    data, source = record.data, record.source
    if isinstance(data.get("prompt"), dict) and "replies" in data["prompt"]:
        return _oasst_conversations(record)
    if "conversations" in data:
        turns = _turn_list(data, "conversations", source)
        raw = [_sharegpt_turn(t, i, source) for i, t in enumerate(turns)]
    elif "messages" in data:
        turns = _turn_list(data, "messages", source)
        raw = [_openai_turn(t, i, source) for i, t in enumerate(turns)]
    elif "instruction" in data:
        raw = _alpaca_turns(data, source)
    else:
        raise InvalidRecord(f"{source}: not a chat record: expected 'conversations' (ShareGPT), 'messages' "
                            f"(OpenAI), 'instruction'+'output' (Alpaca) or an Open-Assistant 'prompt' tree; "
                            f"got fields {sorted(data)}", "missing_field")
    if isinstance(data.get("system"), str) and data["system"].strip():
        raw.insert(0, {"role": SYSTEM, "content": data["system"].strip()})
    tools = _parse_tools(data.get("tools"), source)
    return [Conversation(record.id, source, _finish_messages(raw, record.id, source), tools)]


def _turn_list(data: dict, key: str, source: str) -> list:
    turns = data[key]
    if not isinstance(turns, list) or not turns:
        raise InvalidRecord(f"{source}: field {key!r} must be a non-empty list of messages", "missing_field")
    return turns


def _sharegpt_turn(turn: Any, index: int, source: str) -> dict:
    if not isinstance(turn, dict):
        raise InvalidRecord(f"{source}: message {index} must be an object, got {type(turn).__name__}")
    role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    what = f"message {index}"
    role = get_str(turn, role_key, source, what)
    return {"role": _canonical_role(role, index, source), "content": get_str(turn, text_key, source, what)}


def _openai_turn(turn: Any, index: int, source: str) -> dict:
    if not isinstance(turn, dict):
        raise InvalidRecord(f"{source}: message {index} must be an object, got {type(turn).__name__}")
    what = f"message {index}"
    role = _canonical_role(get_str(turn, "role", source, what), index, source)
    message = {"role": role, "content": _content_text(turn.get("content"), index, source)}
    if turn.get("tool_calls"):
        message["tool_calls"] = [_normalise_tool_call(c, source) for c in turn["tool_calls"]]
    elif turn.get("content") is None:
        raise InvalidRecord(f"{source}: {what} has no field 'content'", "missing_field")
    if "tool_call_id" in turn:
        message["tool_call_id"] = turn["tool_call_id"]
    return message


def _content_text(content: Any, index: int, source: str) -> str:
    """OpenAI content: a string or a list of {"type": "text", "text": ...} parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise InvalidRecord(f"{source}: message {index}: content must be a string or a list of text parts "
                        f"(other part types such as images are not supported)", "invalid_field")


def _canonical_role(role: str, index: int, source: str) -> str:
    canonical = ROLE_ALIASES.get(role.strip().lower())
    if canonical is None:
        raise InvalidRecord(f"{source}: message {index} has unknown role {role!r}; expected one of "
                            f"{sorted(ROLE_ALIASES)}", "unknown_role")
    return canonical


def _alpaca_turns(data: dict, source: str) -> list[dict]:
    instruction = get_str(data, "instruction", source, allow_empty=False)
    extra = data.get("input") or ""
    answer_key = "output" if "output" in data or "response" not in data else "response"
    answer = get_str(data, answer_key, source, allow_empty=False)
    user = f"{instruction.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else instruction
    return [{"role": USER, "content": user}, {"role": ASSISTANT, "content": answer}]


def _oasst_conversations(record: Record) -> list[Conversation]:
    """Every root-to-leaf path of an Open-Assistant message tree (deleted messages are left out)."""
    conversations = []
    stack: list[tuple[dict, list[dict]]] = [(record.data["prompt"], [])]
    while stack:
        node, path = stack.pop()
        if node.get("deleted"):
            continue
        where = f"{record.source} (message {node.get('message_id', '?')})"
        message = {"role": _canonical_role(get_str(node, "role", where, "message"), len(path), where),
                   "content": get_str(node, "text", where, "message")}
        path = path + [message]
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        if not replies:
            conv_id = f"{record.id}:{node.get('message_id', len(conversations))}"
            conversations.append(Conversation(conv_id, record.source, _finish_messages(path, conv_id, where)))
        stack.extend((reply, path) for reply in reversed(replies))
    return conversations


def _parse_tools(tools: Any, source: str) -> list[dict] | None:
    """Tool definitions as a list of {"type": "function", "function": {...}} (a JSON string is accepted)."""
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise InvalidRecord(f"{source}: field 'tools' is not valid JSON: {e.msg}", "invalid_field") from e
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidRecord(f"{source}: field 'tools' must be a list of function definitions", "invalid_field")
    return [t if "type" in t else {"type": "function", "function": t} for t in tools] or None


def _normalise_tool_call(call: Any, source: str) -> dict:
    """{"type": "function", "function": {"name", "arguments": dict}} (templates apply tojson to arguments)."""
    if not isinstance(call, dict):
        raise InvalidRecord(f"{source}: a tool call must be an object, got {type(call).__name__}", "invalid_field")
    function = call.get("function", call)
    name = get_str(function, "name", source, "tool call")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise InvalidRecord(f"{source}: tool call {name!r}: arguments are not valid JSON: {e.msg}",
                                "invalid_field") from e
    normalised = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if "id" in call:
        normalised["id"] = call["id"]
    return normalised


def _tool_call_message(content: str, source: str) -> dict:
    """A ShareGPT `function_call` turn ('{"name": ..., "arguments": ...}') as an assistant tool call."""
    try:
        call = json.loads(content)
    except json.JSONDecodeError as e:
        raise InvalidRecord(f"{source}: function_call value is not valid JSON: {e.msg}", "invalid_field") from e
    calls = call if isinstance(call, list) else [call]
    return {"role": ASSISTANT, "content": "", "tool_calls": [_normalise_tool_call(c, source) for c in calls]}


def _finish_messages(raw: list[dict], conv_id: str, source: str) -> list[dict]:
    """Strip contents, map tool-call turns, pair tool results with call ids, check the order of roles
    and drop trailing non-assistant messages (nothing after the last assistant turn is trained)."""
    messages: list[dict] = []
    pending_ids: list[str] = []
    for index, message in enumerate(raw):
        message = dict(message, content=(message.get("content") or "").strip())
        if message["role"] == TOOL_CALL:
            message = _tool_call_message(message["content"], f"{source} message {index}")
        for number, call in enumerate(message.get("tool_calls", [])):
            call.setdefault("id", _tool_call_id(conv_id, index, number))
            pending_ids.append(call["id"])
        if message["role"] == TOOL and "tool_call_id" not in message and pending_ids:
            message["tool_call_id"] = pending_ids.pop(0)
        messages.append(message)
    _check_roles(messages, source)
    while messages and messages[-1]["role"] != ASSISTANT:
        messages.pop()
    return messages


def _tool_call_id(conv_id: str, index: int, number: int) -> str:
    """A stable 9-character alphanumeric id (Mistral's template requires exactly that shape)."""
    return hashlib.sha1(f"{conv_id}/{index}/{number}".encode()).hexdigest()[:9]


def _check_roles(messages: list[dict], source: str) -> None:
    """A leading system message at most, then a user message first. Stricter alternation rules are the
    chat template's to enforce (its error is reported with the source)."""
    for index, message in enumerate(messages):
        if message["role"] == SYSTEM and index != 0:
            raise InvalidRecord(f"{source}: system message at position {index}; only one leading system "
                                "message is supported", "misplaced_system")
        if not message["content"] and not message.get("tool_calls") and message["role"] != TOOL:
            raise InvalidRecord(f"{source}: message {index} ({message['role']}) is empty", "empty_message")
    first = next((m for m in messages if m["role"] != SYSTEM), None)
    if first is None:
        raise InvalidRecord(f"{source}: conversation has no user or assistant message", "missing_field")
    if first["role"] != USER:
        raise InvalidRecord(f"{source}: conversation starts with a message from the {first['role']}; the first "
                            "message after the optional system prompt must come from the user", "starts_with_assistant")


# ---------------------------------------------------------------------------------------------------
# FIM and text records
# ---------------------------------------------------------------------------------------------------

def parse_fim(record: Record) -> FimExample:
    """{"prefix", "middle", "suffix"} or the HumanEval-infilling names (prompt, canonical_solution, suffix)."""
    data, source = record.data, record.source
    if "prefix" in data or "middle" in data:
        prefix, middle = get_str(data, "prefix", source), get_str(data, "middle", source)
    elif "canonical_solution" in data:
        prefix, middle = get_str(data, "prompt", source), get_str(data, "canonical_solution", source)
    else:
        raise InvalidRecord(f"{source}: not a FIM record: expected 'prefix', 'middle', 'suffix' (or the "
                            f"HumanEval-infilling 'prompt', 'canonical_solution', 'suffix'); got fields "
                            f"{sorted(data)}", "missing_field")
    suffix = get_str(data, "suffix", source)
    if not middle:
        raise InvalidRecord(f"{source}: empty middle: a FIM sample needs a non-empty middle to train on",
                            "empty_middle")
    return FimExample(record.id, source, prefix, middle, suffix)


def parse_text(record: Record) -> TextExample:
    """{"text"} (everything trained) or {"prompt", "completion"} (the completion trained)."""
    data, source = record.data, record.source
    if "completion" in data:
        completion = get_str(data, "completion", source, allow_empty=False)
        return TextExample(record.id, source, completion, prompt=get_str(data, "prompt", source))
    if "text" in data:
        return TextExample(record.id, source, get_str(data, "text", source, allow_empty=False))
    raise InvalidRecord(f"{source}: not a text record: expected 'text' or 'prompt'+'completion'; got fields "
                        f"{sorted(data)}", "missing_field")


def parse_record(record: Record, data_format: str) -> list[Conversation] | list[FimExample] | list[TextExample]:
    """The examples of one record in `data_format` (a chat record may hold several conversations)."""
    if data_format == "chat":
        return parse_conversations(record)
    if data_format == "fim":
        return [parse_fim(record)]
    if data_format == "text":
        return [parse_text(record)]
    raise ValueError(f"data format: expected one of chat, fim, text; got {data_format!r}")
