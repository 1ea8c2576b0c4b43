"""Jobs: one per output record, each a sequence of prompts whose completions fill the record.

A job hands out its next `JobPrompt` (token ids, and for chat turns the same prompt as messages), takes the engine's
`Completion` of it, and writes its record when it has no prompt left. Chat turn k+1 is prompted with the
regenerated turns before it, so it exists only once turn k is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from eaglespec.data.chat import ChatEncoder
from eaglespec.data.formats import Conversation
from eaglespec.decoding import GenerationOptions
from eaglespec.distill.records import ChatRecord, sharegpt_record, with_id

USER_MARK = "\x00eaglespec-user-turn\x00"  # stands for the user's text when the template is rendered


@dataclass(frozen=True)
class JobPrompt:
    token_ids: list[int]
    seed_key: str  # "{prompt index}:{record id}": the prompt's own seed, the same in every run (resume)
    messages: list[dict] | None = None  # the same prompt as chat messages (chat turns), for a chat endpoint
    options: GenerationOptions | None = None  # None: the run's; a sampled chat's user turn brings its own


@dataclass(frozen=True)
class Completion:
    text: str  # the new text (special tokens skipped)
    token_ids: list[int] | None  # new tokens before the stop token; None from a server that answers text only
    hit_limit: bool  # ended at max_new_tokens (or a full context), not at a stop token


class RegenerationJob(Protocol):
    id: str

    def next_prompt(self) -> JobPrompt | None:
        """The next prompt to complete, or None when the record is finished."""

    def fill(self, completion: Completion) -> None:
        """Store the completion of the prompt last returned by next_prompt."""

    def record(self) -> dict:
        """The regenerated record, in the input's format."""


def continuation_text(tokenizer: Any, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Text of `new_ids` as it reads after the prompt (keeps the leading space SentencePiece drops when a
    continuation is decoded on its own)."""
    prefix = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
    if full.startswith(prefix):
        return full[len(prefix):]
    return tokenizer.decode(new_ids, skip_special_tokens=True)


class BosJob:
    """An unconditional sample from BOS: {"id": "bos-00000", "text": ...}."""

    def __init__(self, id: str, bos_token_id: int):
        self.id, self.prompt, self.text = id, [int(bos_token_id)], None

    def next_prompt(self) -> JobPrompt | None:
        return JobPrompt(self.prompt, f"0:{self.id}") if self.text is None else None

    def fill(self, completion: Completion) -> None:
        self.text = completion.text

    def record(self) -> dict:
        return {"id": self.id, "text": self.text}


class CompletionJob:
    """A single prompt whose completion replaces `record[field]` (text completion or FIM middle)."""

    def __init__(self, id: str, record: dict, field: str, prompt: list[int], tokenizer: Any):
        self.id, self.raw, self.field, self.prompt, self.tokenizer = id, dict(record), field, prompt, tokenizer
        self.done = False

    def next_prompt(self) -> JobPrompt | None:
        return None if self.done else JobPrompt(self.prompt, f"0:{self.id}")

    def fill(self, completion: Completion) -> None:
        if completion.token_ids is None:
            self.raw[self.field] = completion.text
        else:
            self.raw[self.field] = continuation_text(self.tokenizer, self.prompt, completion.token_ids)
        self.done = True

    def record(self) -> dict:
        return with_id(self.raw, self.id)


class ChatJob:
    """Every assistant turn in order; turn k+1 is prompted with the regenerated turns before it.
    Assistant turns that call tools are kept as they are (they still condition later turns)."""

    def __init__(self, chat: ChatRecord, encoder: ChatEncoder):
        self.id, self.chat, self.encoder = chat.conversation.id, chat, encoder
        self.turns = [i for i, m in enumerate(chat.conversation.messages)
                      if m["role"] == "assistant" and not m.get("tool_calls")]
        self.next_turn = 0

    def next_prompt(self) -> JobPrompt | None:
        if self.next_turn >= len(self.turns):
            return None
        conv = self.chat.conversation
        history = conv.messages[: self.turns[self.next_turn]]
        ids = self.encoder.tokenize(self.encoder.render(conv, history, add_generation_prompt=True))
        return JobPrompt(ids, f"{self.next_turn}:{self.id}", messages=[dict(m) for m in history])

    def fill(self, completion: Completion) -> None:
        self.chat.set_content(self.turns[self.next_turn], completion.text.strip())
        self.next_turn += 1

    def record(self) -> dict:
        return with_id(self.chat.raw, self.id)


class SampledChatJob:
    """A conversation the target writes itself, as its users would start one: a user turn sampled from the
    chat template's own user prefix (with `user_options`, e.g. temperature 1), then the target's answer (with
    the run's options). Written as ShareGPT {"id", "conversations"}."""

    def __init__(self, id: str, user_prefix: list[int], encoder: ChatEncoder, user_options: GenerationOptions):
        self.id, self.user_prefix, self.encoder, self.user_options = id, user_prefix, encoder, user_options
        self.messages: list[dict] = []

    def next_prompt(self) -> JobPrompt | None:
        if not self.messages:
            return JobPrompt(self.user_prefix, f"0:{self.id}", options=self.user_options)
        if len(self.messages) == 1 and self.messages[0]["content"]:  # an empty user turn gets no answer
            conv = sampled_conversation(self.id, self.messages)
            ids = self.encoder.tokenize(self.encoder.render(conv, self.messages, add_generation_prompt=True))
            return JobPrompt(ids, f"1:{self.id}", messages=[dict(m) for m in self.messages])
        return None

    def fill(self, completion: Completion) -> None:
        role = "assistant" if self.messages else "user"
        self.messages.append({"role": role, "content": completion.text.strip()})

    def record(self) -> dict:
        return sharegpt_record(self.id, self.messages)


def sampled_conversation(id: str, messages: list[dict]) -> Conversation:
    return Conversation(id, f"sampled chat {id}", messages)


def user_turn_prefix(encoder: ChatEncoder) -> list[int]:
    """Token ids of a chat as the template starts it (its default system prompt, if any, included) up to where
    the first user message's text begins: the target samples a user turn from there."""
    messages = [{"role": "user", "content": USER_MARK}]
    text = encoder.render(sampled_conversation("user-prefix", messages), messages, add_generation_prompt=False)
    if USER_MARK not in text:
        raise ValueError("the chat template does not write a user message's text as it is, so there is no place "
                         "to sample a user turn from; give the prompts with --input instead")
    return encoder.tokenize(text[: text.index(USER_MARK)])
