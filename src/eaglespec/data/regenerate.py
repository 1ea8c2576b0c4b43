"""Self-distillation: replace the answers in a dataset with the target model's own output.

Each assistant turn (conditioned on the already regenerated history), each FIM middle, or each text
completion is regenerated with `model.generate` (batched, LEFT padded; greedy at temperature 0,
seeded sampling otherwise). `regenerate_from_bos` samples unconditional texts from a base model.

Output is JSON Lines, one complete record per finished input record, in the input's format (ids kept).
Records are batched by prompt length within windows of a few batches (less padding), so the output
follows the input order window by window, not record by record.
Resumable: each batch is appended with ONE write of complete lines and fsync'ed, so the file is valid
JSONL at every moment except, after a crash mid-write, a partial last line; a rerun truncates that
partial line, skips the ids already written and continues.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

DATA_FORMATS = ("chat", "fim", "text")
BOS_ID_PREFIX = "bos-"


@dataclass
class SamplingSettings:
    """How new tokens are drawn. temperature 0 = greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens: expected 0..max_new_tokens={self.max_new_tokens}, "
                             f"got {self.min_new_tokens}")


@dataclass
class RegenerateSummary:
    total: int  # records the output should hold when done
    already_done: int  # found finished in an existing output and skipped
    generated: int  # records written by this run
    hit_max_new_tokens: int  # generations cut at max_new_tokens before any stop token
    skipped: dict[str, int] = field(default_factory=dict)  # records `prepare` would reject, by reason (not written)


class Generator:
    """A causal LM plus its tokenizer: batched generation from token-id prompts."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: SamplingSettings):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.stop_ids = _stop_token_ids(model, tokenizer)
        if not self.stop_ids:
            raise ValueError("neither the tokenizer nor the model's generation_config names an EOS token; "
                             "generation would never stop")
        config = model.config.get_text_config()
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.hit_max_new_tokens = 0

    def add_stop_token(self, token_id: int) -> None:
        """Also stop at `token_id` (e.g. a FIM terminator that is not the EOS)."""
        if token_id not in self.stop_ids:
            self.stop_ids.append(int(token_id))

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed_key: str, ids: list[str]) -> list[list[int]]:
        """Complete each prompt; return the new ids of each, cut before the first stop token.

        Prompts are LEFT padded so all rows end at the same column and decoding appends in lockstep:
            [pad pad p0 p1 p2 | n0 n1 ...]
            [p0  p1  p2 p3 p4 | n0 n1 ...]
        """
        longest = max(len(p) for p in prompts)
        budget = self.context_length - longest
        if budget < 1:
            row = max(range(len(prompts)), key=lambda i: len(prompts[i]))
            raise ValueError(f"record {ids[row]!r}: prompt has {longest} tokens, which leaves no room to generate "
                             f"within the model's context of {self.context_length} tokens")
        pad_id = self.stop_ids[0]
        input_ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        device = next(self.model.parameters()).device
        torch.manual_seed(_stable_seed(self.settings.seed, seed_key))
        out = self.model.generate(
            input_ids.to(device), attention_mask=attention_mask.to(device),
            generation_config=self._generation_config(min(self.settings.max_new_tokens, budget)),
        )
        return [self._cut_at_stop(row) for row in out[:, longest:].tolist()]

    def _generation_config(self, max_new_tokens: int):
        from transformers import GenerationConfig

        s = self.settings
        sample = s.temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens, min_new_tokens=min(s.min_new_tokens, max_new_tokens),
            do_sample=sample, temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
            top_k=None, eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0],
        )

    def _cut_at_stop(self, new_ids: list[int]) -> list[int]:
        for i, t in enumerate(new_ids):
            if t in self.stop_ids:
                return new_ids[:i]
        self.hit_max_new_tokens += 1
        return new_ids

    def continuation_text(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        """Text of `new_ids` as it reads after the prompt (keeps the leading space SentencePiece drops
        when a continuation is decoded on its own)."""
        decode = self.tokenizer.decode
        prefix = decode(prompt_ids, skip_special_tokens=True)
        full = decode(prompt_ids + new_ids, skip_special_tokens=True)
        if full.startswith(prefix):
            return full[len(prefix):]
        return decode(new_ids, skip_special_tokens=True)


def _stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation_config (chat models list their end-of-turn
    token there, e.g. <|im_end|> or <|eot_id|>), then BOS: a generated BOS starts another document, and
    llama2.c-style models (the bundled stories260K) end a text that way, never with EOS."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos, tokenizer.bos_token_id):
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    return ids


def _stable_seed(seed: int, key: str) -> int:
    """A per-batch seed that depends on the batch content, not on how many batches ran before, so a
    resumed run draws the same samples as an uninterrupted one would for the same batch."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------------
# Resumable JSONL output
# ---------------------------------------------------------------------------------------------------

def finished_ids(path: str | os.PathLike) -> list[str]:
    """Ids already in an existing output; a partial last line (from a killed run) is truncated first."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                       path, len(data) - complete)
        with open(path, "r+b") as f:
            f.truncate(complete)
            os.fsync(f.fileno())
    ids = []
    for line_no, line in enumerate(data[:complete].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids.append(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: existing output line is not a record with an 'id' ({e}); "
                             "is this file the output of another tool? Move it away or pick another --output") from e
    return ids


def append_records(path: str | os.PathLike, records: list[dict]) -> None:
    """Append complete JSON lines with a single write, then fsync."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, pipes); regular files write it all
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------
# Jobs: one per record, each a sequence of prompts whose completions fill the record
# ---------------------------------------------------------------------------------------------------

class RegenerationJob(Protocol):
    id: str

    def next_prompt(self) -> list[int] | None:
        """Token ids of the next prompt to complete, or None when the record is finished."""

    def fill(self, new_ids: list[int]) -> None:
        """Store the completion of the prompt last returned by next_prompt."""

    def record(self) -> dict:
        """The regenerated record, in the input's format."""


class BosJob:
    """An unconditional sample from BOS: {"id": "bos-00000", "text": ...}."""

    def __init__(self, id: str, generator: Generator):
        bos = generator.tokenizer.bos_token_id
        if bos is None:
            raise ValueError("--from-bos needs a tokenizer with a BOS token; this one has none")
        self.id, self.generator, self.prompt, self.text = id, generator, [int(bos)], None

    def next_prompt(self) -> list[int] | None:
        return self.prompt if self.text is None else None

    def fill(self, new_ids: list[int]) -> None:
        self.text = self.generator.tokenizer.decode(new_ids, skip_special_tokens=True)

    def record(self) -> dict:
        return {"id": self.id, "text": self.text}


class CompletionJob:
    """A single prompt whose completion replaces `record[field]` (text completion or FIM middle)."""

    def __init__(self, id: str, record: dict, field: str, prompt: list[int], generator: Generator):
        self.id, self.raw, self.field, self.prompt, self.generator = id, dict(record), field, prompt, generator
        self.done = False

    def next_prompt(self) -> list[int] | None:
        return None if self.done else self.prompt

    def fill(self, new_ids: list[int]) -> None:
        self.raw[self.field] = self.generator.continuation_text(self.prompt, new_ids)
        self.done = True

    def record(self) -> dict:
        return _with_id(self.raw, self.id)


class ChatJob:
    """Every assistant turn in order; turn k+1 is prompted with the regenerated turns before it.
    Assistant turns that call tools are kept as they are (they still condition later turns)."""

    def __init__(self, chat: "ChatRecord", encoder: Any, generator: Generator):
        self.id, self.chat, self.encoder, self.generator = chat.conversation.id, chat, encoder, generator
        self.turns = [i for i, m in enumerate(chat.conversation.messages)
                      if m["role"] == "assistant" and not m.get("tool_calls")]
        self.next_turn = 0

    def next_prompt(self) -> list[int] | None:
        if self.next_turn >= len(self.turns):
            return None
        conv = self.chat.conversation
        history = conv.messages[: self.turns[self.next_turn]]
        return self.encoder.tokenize(self.encoder.render(conv, history, add_generation_prompt=True))

    def fill(self, new_ids: list[int]) -> None:
        text = self.generator.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        self.chat.set_content(self.turns[self.next_turn], text)
        self.next_turn += 1

    def record(self) -> dict:
        return _with_id(self.chat.raw, self.id)


def _with_id(raw: dict, id: str) -> dict:
    """The record as read (its own "id" value and type kept); records without one get their resume key."""
    return raw if "id" in raw else {"id": id, **raw}


# ---------------------------------------------------------------------------------------------------
# Input records -> jobs (parsing and validation are eaglespec.data.formats', as in `prepare`)
# ---------------------------------------------------------------------------------------------------

@dataclass
class ChatRecord:
    """A parsed conversation plus the raw record it came from, edited in place so the output keeps the
    input's format. `locations[i]` = (dict inside `raw`, key) holding message i's text, None for messages
    that are never regenerated."""

    conversation: Any  # eaglespec.data.formats.Conversation
    raw: dict
    locations: list[tuple[dict, str] | None]

    def set_content(self, i: int, text: str) -> None:
        location = self.locations[i]
        assert location is not None, f"message {i} has no place in the raw record"
        self.conversation.messages[i]["content"] = text
        container, key = location
        container[key] = text


def chat_records(record: Any) -> list[ChatRecord]:
    """ShareGPT / OpenAI / Alpaca records are edited in place; an Open-Assistant tree becomes one
    {"id", "messages"} record per root-to-leaf path (a tree has no single place for a regenerated path)."""
    from eaglespec.data.formats import parse_conversations

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


def _text_job(record: Any, generator: Generator) -> CompletionJob:
    from eaglespec.data.formats import parse_text

    example = parse_text(record)
    if example.prompt is None:
        raise ValueError(f"{record.source}: text regeneration needs {{'prompt', 'completion'}} records (the "
                         "completion is regenerated); a plain {'text'} has no prompt. For unconditional samples "
                         "use --from-bos N")
    prompt = generator.tokenizer(example.prompt)["input_ids"]  # with BOS where the tokenizer adds it, as prepare
    return CompletionJob(record.id, record.data, "completion", prompt, generator)


def _fim_job(record: Any, fim: Any, generator: Generator) -> CompletionJob:
    from eaglespec.data.fim import fim_prompt_ids
    from eaglespec.data.formats import parse_fim

    example = parse_fim(record)
    field = "middle" if "middle" in record.data else "canonical_solution"
    prompt = fim_prompt_ids(generator.tokenizer, example.prefix, example.suffix, fim)
    return CompletionJob(record.id, record.data, field, prompt, generator)


def build_jobs(path: str | os.PathLike, data_format: str, generator: Generator, fim_tokens: str | None = None,
               fim_order: str | None = None) -> list[RegenerationJob]:
    """One job per input record (per conversation for Open-Assistant trees); ids must be unique, they are
    the resume keys. fim_tokens / fim_order: as for `prepare` (override FIM token detection / layout)."""
    from eaglespec.data.chat import ChatEncoder
    from eaglespec.data.fim import detect_fim_tokens
    from eaglespec.data.formats import read_records

    if data_format not in DATA_FORMATS:
        raise ValueError(f"data format: expected one of {DATA_FORMATS}, got {data_format!r}")
    encoder = ChatEncoder(generator.tokenizer) if data_format == "chat" else None
    fim = detect_fim_tokens(generator.tokenizer, fim_tokens, fim_order) if data_format == "fim" else None
    if fim is not None:
        generator.add_stop_token(fim.terminator_id)
    jobs: list[RegenerationJob] = []
    first_seen: dict[str, str] = {}
    for record in read_records(path).records:
        if data_format == "chat":
            new: list[RegenerationJob] = [ChatJob(chat, encoder, generator) for chat in chat_records(record)]
        elif data_format == "fim":
            new = [_fim_job(record, fim, generator)]
        else:
            new = [_text_job(record, generator)]
        for job in new:
            if job.id in first_seen:
                raise ValueError(f"{record.source}: duplicate id {job.id!r} (first at {first_seen[job.id]}); ids "
                                 "must be unique because a resumed run skips the ids already written")
            first_seen[job.id] = record.source
        jobs.extend(new)
    if not jobs:
        raise ValueError(f"{path}: no records")
    return jobs


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------

@dataclass
class RegeneratePlan:
    output: Path
    total: int  # records the output holds when done
    already_done: int  # finished by an earlier run (skipped)
    todo: list[RegenerationJob]
    data_format: str | None = None  # records are checked as `prepare --data-format` reads them


def plan_regeneration(jobs: list[RegenerationJob], output: str | os.PathLike,
                      data_format: str | None = None) -> RegeneratePlan:
    """Repair `output` (partial last line), find the ids already written and keep the jobs still to do."""
    done = set(finished_ids(output))
    unknown = done - {job.id for job in jobs}
    if unknown:
        raise ValueError(f"{output}: holds {len(unknown)} ids that are not in this run's input "
                         f"(e.g. {sorted(unknown)[:3]}); it is another run's output. Pick another --output")
    return RegeneratePlan(Path(output), len(jobs), len(done), [job for job in jobs if job.id not in done], data_format)


def run_plan(
    plan: RegeneratePlan,
    generator: Generator,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> RegenerateSummary:
    """Regenerate `plan.todo`, `batch_size` records at a time, appending each finished group of records
    with one write. Within a group, prompt k of every record goes in one batch (for chat: turn k)."""
    if batch_size < 1:
        raise ValueError(f"batch size: expected >= 1, got {batch_size}")
    generator.hit_max_new_tokens = 0
    skipped: Counter[str] = Counter()
    for group in _length_sorted_groups(plan.todo, batch_size):
        _complete_group(group, generator)
        records = [job.record() for job in group]
        kept = [r for r in records if not _count_rejected(r, plan.data_format, skipped)]
        append_records(plan.output, kept)
        if progress is not None:
            progress(len(group))
    return RegenerateSummary(total=plan.total, already_done=plan.already_done,
                             generated=len(plan.todo) - sum(skipped.values()),
                             hit_max_new_tokens=generator.hit_max_new_tokens, skipped=dict(skipped))


def _count_rejected(record: dict, data_format: str | None, skipped: Counter) -> bool:
    """True (and counted by reason) when `prepare` would reject the regenerated record, e.g. an empty text
    because the model sampled EOS first: such a record is not written, so the file always prepares."""
    from eaglespec.data.formats import InvalidRecord, Record, parse_record

    if data_format is None:
        return False
    try:
        parse_record(Record("regenerated", str(record.get("id", "")), record), data_format)
    except InvalidRecord as e:
        logger.info("not written (prepare would reject it): %s %s", record.get("id"), e)
        skipped[e.reason] += 1
        return True
    return False


SORT_WINDOW_BATCHES = 8  # groups are formed by prompt length within windows of this many batches


def _length_sorted_groups(jobs: list[RegenerationJob], batch_size: int) -> list[list[RegenerationJob]]:
    """Batches of jobs with similar first-prompt lengths, so left padding wastes little of each forward.
    Sorting happens within windows of SORT_WINDOW_BATCHES batches, so the output still follows the input
    order window by window (a run stopped early has regenerated a prefix of the input, give or take a window)."""
    window = batch_size * SORT_WINDOW_BATCHES
    groups = []
    for start in range(0, len(jobs), window):
        chunk = sorted(jobs[start:start + window], key=lambda job: len(job.next_prompt() or ()))
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return groups


def _complete_group(group: list[RegenerationJob], generator: Generator) -> None:
    step = 0
    while True:
        pending = [(job, prompt) for job in group if (prompt := job.next_prompt()) is not None]
        if not pending:
            return
        ids = [job.id for job, _ in pending]
        new = generator.generate([prompt for _, prompt in pending], seed_key=f"{ids[0]}:{step}", ids=ids)
        for (job, _), new_ids in zip(pending, new):
            job.fill(new_ids)
        step += 1


def bos_jobs(num_samples: int, generator: Generator) -> list[RegenerationJob]:
    """`num_samples` unconditional samples with ids bos-00000, bos-00001, ..."""
    if num_samples < 1:
        raise ValueError(f"--from-bos: expected a number of samples >= 1, got {num_samples}")
    return [BosJob(f"{BOS_ID_PREFIX}{i:05d}", generator) for i in range(num_samples)]


def regenerate_file(
    generator: Generator,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    data_format: str,
    batch_size: int = 8,
) -> RegenerateSummary:
    """Regenerate every assistant turn / FIM middle / text completion of `input_path` into `output`."""
    plan = plan_regeneration(build_jobs(input_path, data_format, generator), output, data_format)
    return run_plan(plan, generator, batch_size)


def regenerate_from_bos(
    generator: Generator, num_samples: int, output: str | os.PathLike, batch_size: int = 8
) -> RegenerateSummary:
    """Sample `num_samples` unconditional texts from BOS into `output` ({"id": "bos-00000", "text"})."""
    return run_plan(plan_regeneration(bos_jobs(num_samples, generator), output, "text"), generator, batch_size)
