"""Chat-record surgery: the places inside a raw input record (ShareGPT, OpenAI messages, Alpaca, Open-Assistant
trees) that hold each message's text, so a regenerated answer is written back in the input's own format."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from eaglespec.data.formats import Conversation, Record, parse_conversations


@dataclass
class ChatRecord:
    """A parsed conversation plus the raw record it came from, edited in place so the output keeps the
    input's format. `locations[i]` = (dict inside `raw`, key) holding message i's text, None for messages
    that are never regenerated."""

    conversation: Conversation
    raw: dict
    locations: list[tuple[dict, str] | None]

    def set_content(self, i: int, text: str) -> None:
        location = self.locations[i]
        assert location is not None, f"message {i} has no place in the raw record"
        self.conversation.messages[i]["content"] = text
        container, key = location
        container[key] = text


def chat_records(record: Record) -> list[ChatRecord]:
    """ShareGPT / OpenAI / Alpaca records are edited in place; an Open-Assistant tree becomes one
    {"id", "messages"} record per root-to-leaf path (a tree has no single place for a regenerated path)."""
    conversations = parse_conversations(record)
    data = record.data
    if len(conversations) != 1 or not any(k in data for k in ("conversations", "messages", "instruction")):
        out = []
        for conv in conversations:
            raw = {"id": conv.id, "messages": [dict(m) for m in conv.messages]}
            out.append(ChatRecord(conv, raw, [(m, "content") for m in raw["messages"]]))
        return out
    conv = conversations[0]
    raw = copy.deepcopy(data)
    if "instruction" in raw and not ("conversations" in raw or "messages" in raw):
        answer_key = "output" if "output" in raw else "response"
        return [ChatRecord(conv, raw, [None, (raw, answer_key)])]
    turns = raw["conversations"] if "conversations" in raw else raw["messages"]
    # A top-level "system" field becomes message 0, with no turn of its own (as formats.parse_conversations).
    offset = 1 if isinstance(data.get("system"), str) and data["system"].strip() else 0
    locations: list[tuple[dict, str] | None] = [None] * offset
    for turn in turns[: len(conv.messages) - offset]:
        locations.append((turn, "value" if "from" in turn else "content"))
    return [ChatRecord(conv, raw, locations)]


def with_id(raw: dict, id: str) -> dict:
    """The record as read (its own "id" value and type kept); records without one get their resume key."""
    return raw if "id" in raw else {"id": id, **raw}


def sharegpt_record(id: str, messages: list[dict[str, Any]]) -> dict:
    """A conversation written from scratch (a sampled chat) as ShareGPT {"id", "conversations"}."""
    turns = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in messages]
    return {"id": id, "conversations": turns}
