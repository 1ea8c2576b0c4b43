"""Self-distillation: replace the answers in a dataset with the target's own output, sample texts from BOS, or
have a chat model write conversations itself.

One stream of prompts for the whole run: the first prompt of every record, shortest first, then each follow-up
(chat turn k+1 once turn k is complete) ahead of records not started yet. The engine keeps `capacity` prompts in
flight: the local target's continuous batch (`local.py`: a finished row is replaced at once) or an
OpenAI-compatible server (`server.py`: N requests at a time). A record is appended to the output (one write of
complete lines, fsync'ed) in the step it completes, so the file holds records in completion order; a rerun skips
the ids already written (`resume.py`), and per-prompt seeds make its samples those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eaglespec.data.formats import InvalidRecord, Record, parse_record
from eaglespec.decoding import GenerationOptions, SpeculativeGenerator
from eaglespec.distill.jobs import Completion, JobPrompt, RegenerationJob
from eaglespec.distill.local import LocalEngine
from eaglespec.distill.resume import append_records, ids_still_to_do
from eaglespec.distill.sources import JobSet, bos_jobs, file_jobs, sampled_chat_jobs

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8  # prompts decoded together by the local target


class Engine(Protocol):
    capacity: int  # prompts in flight at most
    generated_by: dict | None  # written into each record (None: nothing written)

    @property
    def in_flight(self) -> int: ...

    def submit(self, key: Any, prompt: JobPrompt, record_id: str) -> None: ...

    def collect(self) -> list[tuple[Any, Completion]]:
        """Advance; -> the completions finished meanwhile (with the keys they were submitted with)."""

    def close(self) -> None: ...


@dataclass
class RegenerateSummary:
    total: int  # records the output should hold when done
    already_done: int  # found finished in an existing output and skipped
    generated: int  # records written by this run
    hit_max_new_tokens: int  # generations cut at max_new_tokens before any stop token
    skipped: dict[str, int] = field(default_factory=dict)  # records `prepare` would reject, by reason (not written)


@dataclass
class RegeneratePlan:
    output: Path
    total: int  # records the output holds when done
    already_done: int  # finished by an earlier run (skipped)
    todo: list[RegenerationJob]
    data_format: str | None = None  # records are checked as `prepare --data-format` reads them


def plan_regeneration(jobs: JobSet, output: str | os.PathLike) -> RegeneratePlan:
    """Repair `output` (partial last line), find the ids already written and keep the jobs still to do."""
    todo, done = ids_still_to_do([job.id for job in jobs.jobs], output)
    return RegeneratePlan(Path(output), len(jobs.jobs), done, [job for job in jobs.jobs if job.id in todo],
                          jobs.data_format)


class _PromptQueue:
    """Prompts waiting for the engine: follow-ups first (their record is half done), then first prompts by length."""

    def __init__(self, jobs: list[RegenerationJob]):
        first = {id(job): job.next_prompt() for job in jobs}
        lengths = {key: len(prompt.token_ids) for key, prompt in first.items() if prompt is not None}
        del first  # only the lengths are kept: the prompts are rendered again when their turn comes
        # records with nothing to regenerate (a chat whose assistant turns all call tools) are done already
        self.without_prompts = [job for job in jobs if id(job) not in lengths]
        waiting = [job for job in jobs if id(job) in lengths]
        self.fresh = deque(sorted(waiting, key=lambda job: lengths[id(job)]))  # sorted() is stable: input order on ties
        self.follow_ups: deque[tuple[RegenerationJob, JobPrompt]] = deque()

    def __bool__(self) -> bool:
        return bool(self.fresh or self.follow_ups)

    def pop(self) -> tuple[RegenerationJob, JobPrompt]:
        if self.follow_ups:
            return self.follow_ups.popleft()
        job = self.fresh.popleft()
        return job, job.next_prompt()


def run_plan(plan: RegeneratePlan, engine: Engine, progress: Callable[[int], None] | None = None
             ) -> RegenerateSummary:
    """Complete every job of `plan` through `engine`, appending each record as soon as it is complete."""
    queue, running = _PromptQueue(plan.todo), {}
    hit_limit, skipped = 0, Counter()
    written = _write(plan, queue.without_prompts, engine.generated_by, skipped)
    while queue or engine.in_flight:
        while queue and engine.in_flight < engine.capacity:
            job, prompt = queue.pop()
            running[id(job)] = job
            engine.submit(id(job), prompt, job.id)
        finished = []
        for key, completion in engine.collect():
            job = running.pop(key)
            job.fill(completion)
            hit_limit += completion.hit_limit
            follow_up = job.next_prompt()
            if follow_up is None:
                finished.append(job)
            else:
                queue.follow_ups.append((job, follow_up))
        written += _write(plan, finished, engine.generated_by, skipped)
        if progress is not None and finished:
            progress(len(finished))
    return RegenerateSummary(plan.total, plan.already_done, written, hit_limit, dict(skipped))


def _write(plan: RegeneratePlan, finished: list[RegenerationJob], generated_by: dict | None,
           skipped: Counter) -> int:
    """Append the finished records `prepare` would accept (one write) -> how many were written."""
    records = [job.record() for job in finished]
    if generated_by is not None:
        records = [{**record, "generated_by": generated_by} for record in records]
    kept = [r for r in records if not _count_rejected(r, plan.data_format, skipped)]
    append_records(plan.output, kept)
    return len(kept)


def _count_rejected(record: dict, data_format: str | None, skipped: Counter) -> bool:
    """True (and counted by reason) when `prepare` would reject the regenerated record, e.g. an empty text
    because the model sampled EOS first: such a record is not written, so the file always prepares."""
    if data_format is None:
        return False
    try:
        parse_record(Record("regenerated", str(record.get("id", "")), record), data_format)
    except InvalidRecord as e:
        logger.info("not written (prepare would reject it): %s %s", record.get("id"), e)
        skipped[e.reason] += 1
        return True
    return False


def regenerate(generator: SpeculativeGenerator, jobs: JobSet, output: str | os.PathLike,
               options: GenerationOptions, batch_size: int = DEFAULT_BATCH_SIZE) -> RegenerateSummary:
    """Complete `jobs` with the local target (continuous batch of `batch_size` rows) into `output`."""
    engine = LocalEngine(generator, options, batch_size, jobs.stop_token_ids)
    try:
        return run_plan(plan_regeneration(jobs, output), engine)
    finally:
        engine.close()


def regenerate_file(generator: SpeculativeGenerator, input_path: str | os.PathLike, output: str | os.PathLike,
                    data_format: str, options: GenerationOptions, batch_size: int = DEFAULT_BATCH_SIZE
                    ) -> RegenerateSummary:
    """Regenerate every assistant turn / FIM middle / text completion of `input_path` into `output`."""
    jobs = file_jobs(input_path, data_format, generator.tokenizer)
    return regenerate(generator, jobs, output, options, batch_size)


def regenerate_from_bos(generator: SpeculativeGenerator, num_samples: int, output: str | os.PathLike,
                        options: GenerationOptions, batch_size: int = DEFAULT_BATCH_SIZE) -> RegenerateSummary:
    """Sample `num_samples` unconditional texts from BOS into `output` ({"id": "bos-00000", "text"})."""
    return regenerate(generator, bos_jobs(num_samples, generator.tokenizer), output, options, batch_size)


def regenerate_sampled_chats(generator: SpeculativeGenerator, num_chats: int, output: str | os.PathLike,
                             options: GenerationOptions, user_options: GenerationOptions,
                             batch_size: int = DEFAULT_BATCH_SIZE) -> RegenerateSummary:
    """`num_chats` one-turn chats written by the target into `output` (ShareGPT records)."""
    jobs = sampled_chat_jobs(num_chats, generator.tokenizer, user_options)
    return regenerate(generator, jobs, output, options, batch_size)
