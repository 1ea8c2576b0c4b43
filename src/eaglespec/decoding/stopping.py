"""Stopping rules applied token by token, so no output ever runs past max_new_tokens, an EOS or a stop string;
and the incremental text of a stream (`StreamProgress`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopRule:
    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    decode: object = None  # token ids -> text; needed for stop strings

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stop_strings and self.decode is None:
            raise ValueError("stop strings need a tokenizer to decode the output")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop strings must be non-empty")


@dataclass
class StopState:
    """Accumulates accepted tokens; `add` returns how many of a chunk to keep and whether generation ends."""

    rule: StopRule
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS / stop string) or "length"

    def add(self, chunk: list[int]) -> int:
        """Append the accepted `chunk`, cut at the first stopping token (kept). Returns the number kept."""
        start = len(self.tokens)
        for i, token in enumerate(chunk):
            self.tokens.append(token)
            if token in self.rule.eos_token_ids:
                self.finish_reason = "stop"
                break
            if len(self.tokens) >= self.rule.max_new_tokens:
                self.finish_reason = "length"
                break
        self._cut_at_stop_string(start)
        return len(self.tokens) - start

    def _cut_at_stop_string(self, start: int) -> None:
        """If a stop string appears in the text, keep tokens up to the one that completes it."""
        if not self.rule.stop_strings or not any(s in self.rule.decode(self.tokens) for s in self.rule.stop_strings):
            return
        for end in range(start + 1, len(self.tokens) + 1):  # at most one chunk (tree depth + 1) of decodes
            text = self.rule.decode(self.tokens[:end])
            if any(s in text for s in self.rule.stop_strings):
                del self.tokens[end:]
                self.finish_reason = "stop"
                return


INCOMPLETE_UTF8 = "\ufffd"  # the tokenizer's replacement character: a multi-byte character is not complete yet


class StreamProgress:
    """One request's stopping rules and incremental text: raw per-forward chunks of tokens in, the kept
    tokens and the text they add out. Text ending in an incomplete UTF-8 sequence is held back until the
    next chunk completes it (or generation ends: `flush`)."""

    def __init__(self, rule: StopRule, decode):
        self.state = StopState(rule)
        self.decode = decode  # token ids -> text
        self.text = ""  # text handed out so far
        self.from_draft: list[bool] = []  # per kept token

    def add(self, tokens: list[int], from_draft: list[bool]) -> tuple[int, str]:
        """-> (number of `tokens` kept, new text)."""
        kept = self.state.add(tokens)
        self.from_draft += from_draft[:kept]
        full = self.decode(self.state.tokens)
        if full.endswith(INCOMPLETE_UTF8) and self.state.finish_reason is None:
            return kept, ""
        new_text, self.text = full[len(self.text):], full
        return kept, new_text

    def flush(self) -> str | None:
        """Once generation has ended: the text still held back, or None if everything was handed out."""
        full = self.decode(self.state.tokens)
        if full == self.text:
            return None
        rest, self.text = full[len(self.text):], full
        return rest
