"""From a validated OpenAI request to a scheduled generation and back: prompt ids, limits, events, answer text.

No HTTP here (app.py) and no model math (decoding/): this module checks what the model can do (context,
vocabulary, chat template, server limits), submits a `GenerationJob`, and turns the `StreamChunk`s that come back
into OpenAI text, with OpenAI's stop semantics (the answer ends before the stop string).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from eaglespec.decoding import (
    GenerationOptions,
    GenerationStats,
    InvalidOption,
    PromptTooLong,
    SpeculativeGenerator,
    StreamChunk,
    check_prompt_length,
)
from eaglespec.decoding.text import token_pieces
from eaglespec.serving._decoders import BatchedDecoder, RoundRobinDecoder
from eaglespec.serving.config import ServeConfig
from eaglespec.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest
from eaglespec.serving.scheduler import Event, Failed, Finished, GenerationJob, QueueFullError, Scheduler

PIECE_CONTEXT_TOKENS = 8  # earlier tokens decoded before a chunk, so leading spaces and multi-byte characters
#                           split across tokens come out as they read in the whole text
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting non-streaming request checks that its client is still there
FAILURE_STATUS = {"timeout": (504, "timeout_error"), "shutdown": (503, "server_error"), "internal": (500, "server_error")}


class StopTextFilter:
    """OpenAI stop semantics on streamed text: the answer ends before the first stop string, and a tail that could
    be the start of a stop string is held back until more text shows it is not."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.text = ""  # everything generated so far
        self.emitted = 0  # characters of the answer already handed out

    def add(self, text: str) -> str:
        self.text += text
        visible = self.answer
        end = len(visible) - self._held_back(visible)
        delta = visible[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return delta

    def finish(self) -> str:
        delta = self.answer[self.emitted:]
        self.emitted = len(self.answer)
        return delta

    @property
    def answer(self) -> str:
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=len(self.text))
        return self.text[:cut]

    def _held_back(self, visible: str) -> int:
        if len(visible) < len(self.text):
            return 0  # a stop string was found: the answer is final
        longest = max((len(s) for s in self.stops), default=1) - 1
        for k in range(min(longest, len(visible)), 0, -1):
            if any(s.startswith(visible[-k:]) for s in self.stops):
                return k
        return 0


@dataclass
class StepView:
    """One target forward as a client sees it."""

    text: str  # answer text it adds (after stop-string handling)
    token_ids: list[int]
    from_draft: list[bool]
    pieces: list[str]  # per token: the raw text it adds (before stop handling), for marking draft tokens

    def extra(self) -> dict:
        return {"token_ids": self.token_ids, "from_draft": self.from_draft, "pieces": self.pieces}


class Answer:
    """Accumulates the chunks of one generation."""

    def __init__(self, tokenizer, stops: list[str], prompt_tokens: int):
        self.tokenizer = tokenizer
        self.filter = StopTextFilter(stops)
        self.prompt_tokens = prompt_tokens
        self.token_ids: list[int] = []
        self.from_draft: list[bool] = []
        self.stats: GenerationStats | None = None

    def add(self, chunk: StreamChunk) -> StepView:
        pieces = self._pieces(chunk)
        self.token_ids += chunk.token_ids
        self.from_draft += chunk.from_draft
        return StepView(self.filter.add(chunk.text), chunk.token_ids, chunk.from_draft, pieces)

    def _pieces(self, chunk: StreamChunk) -> list[str]:
        if not chunk.token_ids:
            return []
        pieces = token_pieces(self.tokenizer, chunk.token_ids, self.token_ids[-PIECE_CONTEXT_TOKENS:])
        if "".join(pieces) != chunk.text:  # a character spans chunks: give the chunk's text to its first token
            pieces = [chunk.text] + [""] * (len(chunk.token_ids) - 1)
        return pieces

    @property
    def text(self) -> str:
        return self.filter.answer

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason if self.stats is not None else "length"

    def usage(self) -> dict:
        n = len(self.token_ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    def summary(self, per_token: bool) -> dict:
        """The `eaglespec` field of a response (per_token: with the per-token draft flags and ids)."""
        stats = self.stats or GenerationStats()
        out = {"tau": stats.tau, "target_forwards": stats.target_forwards, "accept_lengths": stats.accept_lengths,
               "draft_tokens": sum(self.from_draft)}
        if per_token:
            out.update(token_ids=self.token_ids, from_draft=self.from_draft)
        return out


class RequestHandle:
    """The request-side end of a submitted job: its events as an async iterator, and cancel()."""

    def __init__(self, job: GenerationJob, queue: asyncio.Queue):
        self.job, self.queue = job, queue

    def cancel(self) -> None:
        Scheduler.cancel(self.job)

    async def events(self, disconnected: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[Event]:
        """Events until Finished / Failed; with `disconnected`, checked every DISCONNECT_POLL_SECONDS, stop (and
        cancel the job) once the client is gone."""
        poll = DISCONNECT_POLL_SECONDS if disconnected else None
        checked = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), poll)
            except asyncio.TimeoutError:
                event = None
            if poll is not None and time.monotonic() - checked >= poll:
                checked = time.monotonic()
                if await disconnected():
                    self.cancel()
                    return
            if event is None:
                continue
            yield event
            if isinstance(event, (Finished, Failed)):
                return

    async def steps(self, answer: Answer, disconnected: Callable[[], Awaitable[bool]] | None = None
                    ) -> AsyncIterator[StepView]:
        """StepViews of the generation; Failed raises its APIError; Finished sets answer.stats."""
        async for event in self.events(disconnected):
            if isinstance(event, StreamChunk):
                yield answer.add(event)
            elif isinstance(event, Failed):
                status, kind = FAILURE_STATUS[event.kind]
                raise APIError(status, event.message, type=kind, code=event.kind)
            else:
                answer.stats = event.stats


class GenerationService:
    def __init__(self, generator: SpeculativeGenerator, config: ServeConfig, observer=None):
        if generator.drafter is None:
            raise ValueError("serve needs a draft model (--draft): the server decodes speculatively")
        if generator.tokenizer is None:
            raise ValueError("serve needs the target's tokenizer")
        self.generator, self.config, self.tokenizer = generator, config, generator.tokenizer
        # Prompts are encoded on the event loop while the model thread decodes. A fast tokenizer mutates its Rust
        # state only when its truncation/padding settings change, which a first plain encode may do (tokenizer.json
        # files that enable truncation): do that once here, before the model thread exists.
        self.tokenizer("warm-up")
        self.model_name = config.served_model_name or default_model_name(generator)
        decoder = (RoundRobinDecoder(generator) if config.max_batch_size == 1
                   else BatchedDecoder(generator, config.max_batch_size))
        self.scheduler = Scheduler(decoder, config.max_concurrency, config.queue_size, observer)

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    # -- prompts ------------------------------------------------------------------------------------------------
    def completion_ids(self, request: CompletionRequest) -> list[int]:
        prompt = request.single_prompt()
        if isinstance(prompt, str):
            return self._fit(list(self.tokenizer(prompt)["input_ids"]))
        vocab = self.generator.target.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"prompt: token ids must lie in [0, {vocab}), got {bad[:5]}", param="prompt")
        return self._fit(list(prompt))

    def chat_ids(self, request: ChatCompletionRequest) -> list[int]:
        if not self.has_chat_template:
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions with a text prompt",
                           param="messages")
        messages = [m.as_template_message() for m in request.messages]
        try:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)
        except Exception as e:  # templates raise their own errors (e.g. "roles must alternate")
            raise APIError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
        return self._fit(list(encoded["input_ids"]))

    def _fit(self, ids: list[int]) -> list[int]:
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        try:
            check_prompt_length(len(ids), self.generator.context_length)
        except PromptTooLong as e:
            raise APIError(400, str(e), param="prompt", code="context_length_exceeded") from None
        return ids

    def max_new_tokens(self, requested: int | None, prompt_tokens: int) -> int:
        limit, room = self.config.max_new_tokens_limit, self.generator.context_length - prompt_tokens
        if requested is None:
            return min(limit, room)
        if requested < 1:
            raise APIError(400, f"max_tokens must be >= 1, got {requested}", param="max_tokens")
        if requested > limit:
            raise APIError(400, f"max_tokens {requested} is over this server's limit of {limit}", param="max_tokens")
        if requested > room:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens and max_tokens is {requested}: together "
                           f"over this model's context of {self.generator.context_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return requested

    # -- submission ---------------------------------------------------------------------------------------------
    def options(self, ids: list[int], request: CompletionRequest | ChatCompletionRequest) -> GenerationOptions:
        """The request body's generation settings, checked once (a bad one: 400 naming it)."""
        max_new_tokens = self.max_new_tokens(request.max_tokens, len(ids))
        try:
            return GenerationOptions(max_new_tokens=max_new_tokens, temperature=float(request.temperature),
                                     top_p=float(request.top_p), top_k=request.top_k,
                                     stop=tuple(request.stop_strings()), seed=request.seed)
        except InvalidOption as e:
            raise APIError(400, str(e), param=e.field) from None

    def submit(self, ids: list[int], request: CompletionRequest | ChatCompletionRequest) -> tuple[RequestHandle, Answer]:
        options = self.options(ids, request)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job = GenerationJob(ids, options, _deliverer(loop, queue), timeout=self.config.request_timeout)
        try:
            self.scheduler.submit(job)
        except QueueFullError as e:
            raise APIError(429, f"server busy: {e}; retry later", type="rate_limit_error", code="queue_full") from None
        return RequestHandle(job, queue), Answer(self.tokenizer, list(options.stop), len(ids))


def _deliverer(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[Event], None]:
    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone, nobody is listening
            pass

    return deliver


def default_model_name(generator: SpeculativeGenerator) -> str:
    path = str(getattr(generator.target.model.config, "_name_or_path", "") or "")
    return Path(path).name or "eaglespec"
