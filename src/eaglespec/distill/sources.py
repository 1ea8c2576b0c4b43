"""What to regenerate -> jobs: an input file (chat / FIM / text records, parsed and validated by
`eaglespec.data.formats` as `prepare` does), unconditional samples from BOS, or chats the target writes itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eaglespec.data.chat import ChatEncoder
from eaglespec.data.fim import FimTokens, detect_fim_tokens, fim_prompt_ids
from eaglespec.data.formats import Record, parse_fim, parse_text, read_records
from eaglespec.decoding import GenerationOptions
from eaglespec.distill.jobs import BosJob, ChatJob, CompletionJob, RegenerationJob, SampledChatJob, user_turn_prefix
from eaglespec.distill.records import chat_records

DATA_FORMATS = ("chat", "fim", "text")
BOS_ID_PREFIX = "bos-"
SAMPLED_CHAT_ID_PREFIX = "chat-"


@dataclass
class JobSet:
    """The jobs of one run (one per output record; ids are the resume keys) and how their records are read."""

    jobs: list[RegenerationJob]
    data_format: str  # records are checked as `prepare --data-format` reads them
    stop_token_ids: tuple[int, ...] = ()  # stop tokens beyond the model's own (a FIM terminator)


def _text_job(record: Record, tokenizer: Any) -> CompletionJob:
    example = parse_text(record)
    if example.prompt is None:
        raise ValueError(f"{record.source}: text regeneration needs {{'prompt', 'completion'}} records (the "
                         "completion is regenerated); a plain {'text'} has no prompt. For unconditional samples "
                         "use --from-bos N")
    prompt = tokenizer(example.prompt)["input_ids"]  # with BOS where the tokenizer adds it, as prepare
    return CompletionJob(record.id, record.data, "completion", prompt, tokenizer)


def _fim_job(record: Record, fim: FimTokens, tokenizer: Any) -> CompletionJob:
    example = parse_fim(record)
    field = "middle" if "middle" in record.data else "canonical_solution"
    prompt = fim_prompt_ids(tokenizer, example.prefix, example.suffix, fim)
    return CompletionJob(record.id, record.data, field, prompt, tokenizer)


def _record_jobs(record: Record, data_format: str, tokenizer: Any, encoder: ChatEncoder | None,
                 fim: FimTokens | None) -> list[RegenerationJob]:
    if data_format == "chat":
        return [ChatJob(chat, encoder) for chat in chat_records(record)]
    if data_format == "fim":
        return [_fim_job(record, fim, tokenizer)]
    return [_text_job(record, tokenizer)]


def file_jobs(path: str | os.PathLike, data_format: str, tokenizer: Any, fim_tokens: str | None = None,
              fim_order: str | None = None) -> JobSet:
    """One job per input record (per conversation for Open-Assistant trees); ids must be unique, they are
    the resume keys. fim_tokens / fim_order: as for `prepare` (override FIM token detection / layout)."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data format: expected one of {DATA_FORMATS}, got {data_format!r}")
    encoder = ChatEncoder(tokenizer) if data_format == "chat" else None
    fim = detect_fim_tokens(tokenizer, fim_tokens, fim_order) if data_format == "fim" else None
    jobs: list[RegenerationJob] = []
    first_seen: dict[str, str] = {}
    for record in read_records(path).records:
        for job in _record_jobs(record, data_format, tokenizer, encoder, fim):
            if job.id in first_seen:
                raise ValueError(f"{record.source}: duplicate id {job.id!r} (first at {first_seen[job.id]}); ids "
                                 "must be unique because a resumed run skips the ids already written")
            first_seen[job.id] = record.source
            jobs.append(job)
    if not jobs:
        raise ValueError(f"{path}: no records")
    return JobSet(jobs, data_format, () if fim is None else (fim.terminator_id,))


def bos_jobs(num_samples: int, tokenizer: Any) -> JobSet:
    """`num_samples` unconditional samples with ids bos-00000, bos-00001, ..."""
    if num_samples < 1:
        raise ValueError(f"--from-bos: expected a number of samples >= 1, got {num_samples}")
    if tokenizer.bos_token_id is None:
        raise ValueError("--from-bos needs a tokenizer with a BOS token; this one has none")
    return JobSet([BosJob(f"{BOS_ID_PREFIX}{i:05d}", tokenizer.bos_token_id) for i in range(num_samples)], "text")


def sampled_chat_jobs(num_chats: int, tokenizer: Any, user_options: GenerationOptions) -> JobSet:
    """`num_chats` conversations written by the target (ids chat-00000, chat-00001, ...); the user turns are
    sampled with `user_options`."""
    if num_chats < 1:
        raise ValueError(f"--sample-chats: expected a number of chats >= 1, got {num_chats}")
    encoder = ChatEncoder(tokenizer)
    prefix = user_turn_prefix(encoder)
    jobs = [SampledChatJob(f"{SAMPLED_CHAT_ID_PREFIX}{i:05d}", prefix, encoder, user_options)
            for i in range(num_chats)]
    return JobSet(jobs, "chat")
