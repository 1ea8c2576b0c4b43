"""How the model thread advances its active jobs by one step: round-robin over batch-size-1 streams, or one
batched step of a `decoding.batch.RunningBatch` for all of them. Both run on the scheduler's worker thread only.

    RoundRobinDecoder  each job owns a `SpeculativeGenerator.stream()`; a round = one step of each (exactly the
                       numerics of `eaglespec generate`)
    BatchedDecoder     jobs are rows of one running batch; a round = one target forward shared by up to
                       max_batch_size rows (joining rows are prefilled in that round)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from eaglespec.decoding import SpeculativeGenerator, StreamChunk
from eaglespec.serving.scheduler import Event, Failed, Finished, GenerationJob

log = logging.getLogger(__name__)


class Decoder(Protocol):
    def advance(self, jobs: list[GenerationJob]) -> list[tuple[GenerationJob, Event]]:
        """One round over the active jobs -> what each job produced (a chunk, then Finished or Failed)."""
        ...

    def release(self, job: GenerationJob) -> None:
        """Forget a job that ended (finished, cancelled, timed out): free its caches. No-op if unknown."""
        ...


def _bug(e: Exception) -> Failed:
    """Requests are validated before they are queued, so an exception while decoding is a bug, not bad input."""
    log.exception("generation failed")
    return Failed("internal", f"generation failed: {type(e).__name__}: {e}")


class RoundRobinDecoder:
    def __init__(self, generator: SpeculativeGenerator):
        self.generator = generator
        self._streams: dict[GenerationJob, Iterator[StreamChunk]] = {}  # job -> its stream() iterator

    def advance(self, jobs: list[GenerationJob]) -> list[tuple[GenerationJob, Event]]:
        return [(job, self._step(job)) for job in jobs]

    def _step(self, job: GenerationJob) -> Event:
        try:
            if job not in self._streams:
                self._streams[job] = self.generator.stream(job.input_ids, options=job.options, stats=job.stats)
            return next(self._streams[job])
        except StopIteration:
            return Finished(job.stats)
        except Exception as e:
            return _bug(e)

    def release(self, job: GenerationJob) -> None:
        stream = self._streams.pop(job, None)
        if stream is not None:
            stream.close()  # GeneratorExit inside stream(): its caches go with it


class BatchedDecoder:
    def __init__(self, generator: SpeculativeGenerator, max_batch_size: int):
        self.generator, self.max_batch_size = generator, max_batch_size
        self.batch = generator.running_batch(max_batch_size=max_batch_size)
        self._rows: dict[GenerationJob, int] = {}  # job -> its request id in the batch

    def advance(self, jobs: list[GenerationJob]) -> list[tuple[GenerationJob, Event]]:
        produced = [(job, failed) for job in jobs if job not in self._rows and (failed := self._join(job))]
        try:
            events = self.batch.step()
        except Exception as e:  # the batch's caches may be inconsistent now: fail its rows, start a new batch
            failure = _bug(e)
            produced += [(job, failure) for job in self._rows]
            self._rows.clear()
            self.batch = self.generator.running_batch(max_batch_size=self.max_batch_size)
            return produced
        jobs_by_id = {request_id: job for job, request_id in self._rows.items()}
        for event in events:
            job = jobs_by_id[event.request_id]
            produced.append((job, event.chunk))
            if event.finished:
                del self._rows[job]
                output = event.output
                job.stats = output.stats
                produced.append((job, Failed("internal", output.error) if output.error else Finished(output.stats)))
        return produced

    def _join(self, job: GenerationJob) -> Failed | None:
        try:
            self._rows[job] = self.batch.add(job.input_ids, options=job.options)
        except Exception as e:
            return _bug(e)
        return None

    def release(self, job: GenerationJob) -> None:
        request_id = self._rows.pop(job, None)
        if request_id is not None:
            self.batch.cancel(request_id)

