r"""Chat conversations -> (input_ids, loss_mask) from the tokenizer's OWN chat template, for any family.

Method (no family-specific offsets): tokenize the full conversation once. For every assistant message k,
render messages[:k] with add_generation_prompt=True; its token ids must be a prefix of the full ids
(else the sample is rejected: the model would see different tokens at inference). The assistant span
starts there. It ends just after the template's end-of-turn token: the last special token inside the
part that the rendering through message k shares with the full rendering.

Worked example (Qwen2.5, ChatML), full rendering:
    <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n
    \______________ generation prompt of message 1 _________________/\__ trained __/\n <- not trained
The "\n" after <|im_end|> is not trained: at inference generation stops at <|im_end|>, the draft never has
to predict what follows it. Decoding the trained tokens of a turn gives exactly "Hello!<|im_end|>".
For Llama-2 (`[/INST] Hello! </s>`) the span is " Hello! </s>" (the template's own spaces belong to the
answer the model generates).

Templates with `{% generation %}` blocks provide assistant masks themselves; those are used as given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from eaglespec.data.formats import ASSISTANT, TOOL, Conversation, InvalidRecord

GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def load_chat_template(path: str | Path) -> str:
    """The Jinja text of a --chat-template file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: chat template file not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: chat template file is empty")
    return text


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of every token the tokenizer marks special (end-of-turn markers are among them)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _appears(content: str, text: str) -> bool:
    """Verbatim, or as the JSON string some templates write (Llama-3.1 applies tojson to tool results)."""
    return content in text or json.dumps(content, ensure_ascii=False) in text


class ChatEncoder:
    """Renders conversations with a chat template and marks the assistant tokens."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None, tokenizer_name: str = "tokenizer"):
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        if not tokenizer.chat_template:
            raise ValueError(f"{tokenizer_name} has no chat template; pass one with --chat-template FILE "
                             "(a Jinja chat template such as the model's chat_template.jinja)")
        self.tokenizer = tokenizer
        templates = tokenizer.chat_template
        text = templates if isinstance(templates, str) else "\n".join(templates.values())
        self.uses_generation_blocks = bool(GENERATION_BLOCK.search(text))
        self.special_ids = special_token_ids(tokenizer)

    def render(self, conv: Conversation, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tools=conv.tools, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja2 TemplateError / raise_exception, or a template's TypeError
            hint = ""
            if conv.tools or any(m["role"] == TOOL or m.get("tool_calls") for m in messages):
                hint = " (the conversation has tool / function-call messages: does this template support them?)"
            raise InvalidRecord(f"{conv.source}: the chat template rejected conversation {conv.id!r}: "
                                f"{type(e).__name__}: {e}{hint}", "template_error") from e

    def tokenize(self, text: str) -> list[int]:
        # Templates spell out BOS themselves, so no special tokens are added (as apply_chat_template does).
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, conv: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, loss_mask), both [T]; loss_mask[i] = 1 on assistant tokens and their end-of-turn."""
        if not any(m["role"] == ASSISTANT for m in conv.messages):
            return [], []  # nothing to train (counted as skipped by the caller)
        if self.uses_generation_blocks:
            return self._encode_with_template_masks(conv)
        text = self.render(conv, conv.messages, add_generation_prompt=False)
        self._check_rendered(conv, text)
        ids = self.tokenize(text)
        mask = [0] * len(ids)
        for k, message in enumerate(conv.messages):
            if message["role"] == ASSISTANT:
                start, end = self._assistant_span(conv, k, ids)
                mask[start:end] = [1] * (end - start)
        return ids, mask

    def _assistant_span(self, conv: Conversation, k: int, ids: list[int]) -> tuple[int, int]:
        """[start, end) of assistant message k in the full token ids."""
        prompt = self.tokenize(self.render(conv, conv.messages[:k], add_generation_prompt=True))
        if ids[: len(prompt)] != prompt:
            raise InvalidRecord(
                f"{conv.source}: conversation {conv.id!r}: the generation prompt before message {k} is not a "
                "token prefix of the full conversation (the template renders earlier turns differently once "
                "later turns exist, or a message boundary merges into one token); the assistant tokens "
                "cannot be aligned with what the model sees at inference", "template_not_incremental")
        through_k = self.tokenize(self.render(conv, conv.messages[: k + 1], add_generation_prompt=False))
        shared = common_prefix_length(through_k, ids)
        ends = [i for i in range(len(prompt), shared) if ids[i] in self.special_ids]
        if not ends:
            raise InvalidRecord(
                f"{conv.source}: conversation {conv.id!r}: message {k} is not followed by a special "
                "end-of-turn token in the chat template's rendering, so the end of the answer is undefined "
                "(use a template whose turns end with a special token, via --chat-template)", "no_end_of_turn")
        return len(prompt), ends[-1] + 1

    def _encode_with_template_masks(self, conv: Conversation) -> tuple[list[int], list[int]]:
        try:
            out = self.tokenizer.apply_chat_template(conv.messages, tools=conv.tools, tokenize=True,
                                                     return_dict=True, return_assistant_tokens_mask=True)
        except Exception as e:
            raise InvalidRecord(f"{conv.source}: the chat template rejected conversation {conv.id!r}: "
                                f"{type(e).__name__}: {e}", "template_error") from e
        return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]

    def _check_rendered(self, conv: Conversation, text: str) -> None:
        """Templates that do not know a role or tool calls often drop them silently: refuse that."""
        for k, message in enumerate(conv.messages):
            missing = [c["function"]["name"] for c in message.get("tool_calls", [])
                       if c["function"]["name"] not in text]
            if message["content"] and not _appears(message["content"], text):
                missing.append(message["content"][:40])
            if missing:
                raise InvalidRecord(
                    f"{conv.source}: conversation {conv.id!r}: the chat template dropped message {k} "
                    f"(role {message['role']!r}{', tool call' if message.get('tool_calls') else ''}): "
                    f"{missing[0]!r} does not appear in the rendering; this template does not support it",
                    "template_dropped_message")
