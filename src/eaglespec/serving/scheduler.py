"""One model thread, many requests: a bounded admission queue, then every active job advanced one step per round.

torch is driven from ONE worker thread. Each round it admits waiting jobs into free slots, drops the cancelled
and timed-out ones, then lets its decoder (`_decoders.py`) advance every active job by one step: one
`SpeculativeGenerator.stream()` step each (round-robin), or one batched step for all. A long answer cannot starve
a short one either way. Events go back to the request's own thread through the job's `deliver` callback.

    submit -> waiting (<= queue_size) -> active (<= max_concurrency) -> finished
                  `-- cancelled / timed out             `-- cancelled (client gone) / timed out / done
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from eaglespec.decoding import GenerationOptions, GenerationStats, StreamChunk

if TYPE_CHECKING:
    from eaglespec.serving._decoders import Decoder

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """Every stream slot and queue place is taken."""


@dataclass
class Failed:
    """A job that ended without finishing: kind is "timeout", "internal" or "shutdown"."""

    kind: str
    message: str


@dataclass
class Finished:
    stats: GenerationStats


Event = StreamChunk | Finished | Failed


@dataclass(eq=False)  # identity: two jobs with equal fields are still two jobs
class GenerationJob:
    input_ids: list[int]
    options: GenerationOptions  # checked when the request arrived
    deliver: Callable[[Event], None]  # called on the worker thread; must not block
    timeout: float  # seconds from `arrived`, queueing included
    arrived: float = field(default_factory=time.monotonic)
    stats: GenerationStats = field(default_factory=GenerationStats)  # the decoder's, complete once Finished
    cancelled: bool = False  # set by the request's thread; read by the worker between steps
    first_token_at: float | None = None
    tokens: int = 0  # tokens delivered so far
    draft_tokens: int = 0  # of which the draft proposed
    outcome: str | None = None  # stop / length / cancelled / timeout / internal / shutdown

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.arrived > self.timeout


class SchedulerObserver(Protocol):
    """Where the scheduler reports; the server's metrics implement it."""

    def queue_changed(self, waiting: int, active: int) -> None: ...
    def first_token(self, job: GenerationJob) -> None: ...
    def finished(self, job: GenerationJob) -> None: ...


class NullObserver:
    def queue_changed(self, waiting: int, active: int) -> None:
        pass

    def first_token(self, job: GenerationJob) -> None:
        pass

    def finished(self, job: GenerationJob) -> None:
        pass


class Scheduler:
    def __init__(self, decoder: Decoder, max_concurrency: int, queue_size: int,
                 observer: SchedulerObserver | None = None):
        self.decoder = decoder
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.observer = observer or NullObserver()
        self._cond = threading.Condition(threading.RLock())
        self._waiting: deque[GenerationJob] = deque()
        self._active: list[GenerationJob] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- request side (any thread) ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eaglespec-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: GenerationJob) -> None:
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if len(self._active) + len(self._waiting) >= self.max_concurrency + self.queue_size:
                raise QueueFullError(f"all {self.max_concurrency} streams busy and {self.queue_size} requests queued")
            self._waiting.append(job)
            self._queue_changed()
            self._cond.notify_all()

    @staticmethod
    def cancel(job: GenerationJob) -> None:
        """Stop a job between two steps (no-op once it has ended); the worker frees its slot next round."""
        job.cancelled = True

    @property
    def load(self) -> tuple[int, int]:
        """(waiting, active) right now."""
        with self._cond:
            return len(self._waiting), len(self._active)

    # -- worker thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while (jobs := self._next_round()) is not None:
            live = [job for job in jobs if not self._ended_early(job)]
            for job, event in self.decoder.advance(live) if live else ():
                self._report(job, event)
        with self._cond:
            for job in [*self._active, *self._waiting]:
                self._end(job, "shutdown", Failed("shutdown", "the server is shutting down"))

    def _next_round(self) -> list[GenerationJob] | None:
        """Admit waiting jobs into free slots; the active jobs of this round, or None once stopped."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._admit()
                if self._active:
                    return list(self._active)
                self._cond.wait()

    def _admit(self) -> None:
        for job in list(self._waiting):
            if job.cancelled:
                self._end(job, "cancelled")
            elif job.expired:
                self._end(job, "timeout", Failed("timeout", f"request timed out after {job.timeout:g} s in the queue"))
        while self._waiting and len(self._active) < self.max_concurrency:
            self._active.append(self._waiting.popleft())
        self._queue_changed()

    def _ended_early(self, job: GenerationJob) -> bool:
        """End an active job whose client left or whose time is up (between two steps)."""
        if job.cancelled:
            self._end(job, "cancelled")
        elif job.expired:
            self._end(job, "timeout", Failed("timeout", f"request timed out after {job.timeout:g} s"))
        return job.outcome is not None

    def _report(self, job: GenerationJob, event: Event) -> None:
        if isinstance(event, Finished):
            return self._end(job, event.stats.finish_reason or "length", event)
        if isinstance(event, Failed):
            return self._end(job, event.kind, event)
        if job.first_token_at is None and event.token_ids:
            job.first_token_at = time.monotonic()
            self.observer.first_token(job)
        job.tokens += len(event.token_ids)
        job.draft_tokens += sum(event.from_draft)
        job.deliver(event)

    def _end(self, job: GenerationJob, outcome: str, event: Event | None = None) -> None:
        """Remove a job wherever it is, free its decoding state, report, tell the request."""
        with self._cond:
            if job in self._active:
                self._active.remove(job)
            elif job in self._waiting:
                self._waiting.remove(job)
            self._queue_changed()
        self.decoder.release(job)
        job.outcome = outcome
        self.observer.finished(job)
        if event is not None:
            job.deliver(event)

    def _queue_changed(self) -> None:
        self.observer.queue_changed(len(self._waiting), len(self._active))
