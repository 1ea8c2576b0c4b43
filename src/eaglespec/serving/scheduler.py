"""One model thread, many requests: a bounded admission queue and a fair round-robin over active streams.

torch is driven from ONE worker thread. Each round it admits waiting jobs into free stream slots, then advances
every active stream by one `SpeculativeGenerator.stream()` step (one target forward), so a long answer cannot
starve a short one. Each stream owns its target and draft caches, so interleaving does not change any output.
Events go back to the request's own thread through the `deliver` callback the job was submitted with.

    submit -> waiting (<= queue_size) -> active (<= max_concurrency) -> finished
                  `-- cancelled / timed out             `-- cancelled (client gone) / timed out / done
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from eaglespec.decoding import GenerationStats, SpeculativeGenerator, StreamChunk

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
    options: dict  # keyword arguments of SpeculativeGenerator.stream (max_new_tokens, temperature, stop, ...)
    deliver: Callable[[Event], None]  # called on the worker thread; must not block
    timeout: float  # seconds from `arrived`, queueing included
    arrived: float = field(default_factory=time.monotonic)
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancelled: bool = False  # set by the request's thread; read by the worker between steps
    first_token_at: float | None = None
    draft_tokens: int = 0  # delivered tokens that the draft proposed
    outcome: str | None = None  # stop / length / cancelled / timeout / internal / shutdown
    _steps: Iterator[StreamChunk] | None = None

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
    def __init__(self, generator: SpeculativeGenerator, max_concurrency: int, queue_size: int,
                 observer: SchedulerObserver | None = None):
        self.generator = generator
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
            for job in jobs:
                self._step(job)
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

    def _step(self, job: GenerationJob) -> None:
        """Advance one job by one target forward (its first step is the prefill)."""
        if job.cancelled:
            return self._end(job, "cancelled")
        if job.expired:
            return self._end(job, "timeout", Failed("timeout", f"request timed out after {job.timeout:g} s"))
        try:
            if job._steps is None:
                job._steps = self.generator.stream(job.input_ids, stats=job.stats, **job.options)
            chunk = next(job._steps)
        except StopIteration:
            return self._end(job, job.stats.finish_reason or "length", Finished(job.stats))
        except Exception as e:  # a bug, not bad input (requests are validated before they are queued)
            log.exception("generation failed")
            return self._end(job, "internal", Failed("internal", f"generation failed: {type(e).__name__}: {e}"))
        if job.first_token_at is None and chunk.token_ids:
            job.first_token_at = time.monotonic()
            self.observer.first_token(job)
        job.draft_tokens += sum(chunk.from_draft)
        job.deliver(chunk)

    def _end(self, job: GenerationJob, outcome: str, event: Event | None = None) -> None:
        """Remove a job wherever it is, close its generator (frees its caches), report, tell the request."""
        with self._cond:
            if job in self._active:
                self._active.remove(job)
            elif job in self._waiting:
                self._waiting.remove(job)
            self._queue_changed()
        if job._steps is not None:
            job._steps.close()
        job.outcome = outcome
        self.observer.finished(job)
        if event is not None:
            job.deliver(event)

    def _queue_changed(self) -> None:
        self.observer.queue_changed(len(self._waiting), len(self._active))
