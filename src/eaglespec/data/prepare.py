"""`prepare_dataset`: input files -> a directory `datasets.load_from_disk` reads, with columns
`id` (str), `input_ids` and `loss_mask` (lists of int, same length), plus `stats.json` and
`prepare_meta.json` (written last; a directory without it is not a finished dataset).

Per sample: encode (chat / fim / text), drop the untrained tail after the last trained token (e.g. the
"\n" after Qwen's last <|im_end|>: never predicted), truncate to max_len (counted), and skip samples with
no trained token left (counted; an error when every sample is empty).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eaglespec.data.formats import Conversation, FimExample, InvalidRecord, TextExample, parse_record, read_records

logger = logging.getLogger(__name__)

DATA_FORMATS = ("chat", "fim", "text")
META_FILE = "prepare_meta.json"
STATS_FILE = "stats.json"
META_VERSION = 1
# Files whose bytes decide how text becomes ids (hashed into `tokenizer_hash`).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
Example = Conversation | FimExample | TextExample


@dataclass
class PrepareStats:
    read: int = 0  # records read from the input files (invalid JSON lines included)
    samples: int = 0  # examples derived from them (an Open-Assistant tree gives one per leaf)
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    truncated: int = 0  # kept samples cut to max_len
    total_tokens: int = 0  # over kept samples
    trained_tokens: int = 0  # loss_mask == 1 over kept samples


@dataclass
class PrepareMeta:
    data_format: str
    tokenizer: str
    tokenizer_hash: str
    max_len: int
    inputs: list[dict]  # [{"path", "sha256"}]
    chat_template_sha256: str | None = None
    system_prompt: str | None = None
    fim_tokens: dict | None = None
    version: int = META_VERSION


@dataclass
class _EncodeOptions:
    """Everything a worker process needs to rebuild the encoder."""

    data_format: str
    tokenizer: str
    max_len: int
    skip_invalid: bool
    chat_template: str | None = None
    system_prompt: str | None = None
    fim_tokens: str | None = None
    fim_order: str | None = None


@dataclass
class _Outcome:
    id: str
    input_ids: list[int] | None = None
    loss_mask: list[int] | None = None
    truncated: bool = False
    skip_reason: str | None = None


# ---------------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------------

def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_hash(path: str | os.PathLike, tokenizer: Any = None) -> str:
    """sha256 over the tokenizer files of a directory (name + bytes); for a hub name, over its vocabulary."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                digest.update(name.encode() + b"\0" + file_sha256(path / name).encode())
        return digest.hexdigest()
    if tokenizer is None:
        raise ValueError(f"{path}: not a directory; pass the loaded tokenizer to hash its vocabulary")
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Encoding (runs in worker processes with --num-proc > 1)
# ---------------------------------------------------------------------------------------------------

def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from eaglespec.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(path))


class SampleEncoder:
    """Example -> finished sample (tail trimmed, truncated) for one data format."""

    def __init__(self, options: _EncodeOptions, tokenizer: Any = None):
        self.options = options
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer)
        name = f"tokenizer {options.tokenizer}"
        self.chat = self.fim = None
        if options.data_format == "chat":
            from eaglespec.data.chat import ChatEncoder

            self.chat = ChatEncoder(self.tokenizer, options.chat_template, tokenizer_name=name)
        elif options.data_format == "fim":
            from eaglespec.data.fim import detect_fim_tokens

            self.fim = detect_fim_tokens(self.tokenizer, options.fim_tokens, options.fim_order, tokenizer_name=name)

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        if self.chat is not None:
            return self.chat.encode(self._with_system_prompt(example))
        if self.fim is not None:
            from eaglespec.data.fim import encode_fim

            return encode_fim(self.tokenizer, example, self.fim)
        from eaglespec.data.text import encode_text

        return encode_text(self.tokenizer, example)

    def _with_system_prompt(self, conv: Conversation) -> Conversation:
        prompt = self.options.system_prompt
        if not prompt or conv.messages[0]["role"] == "system":
            return conv
        return Conversation(conv.id, conv.source, [{"role": "system", "content": prompt}, *conv.messages],
                            conv.tools)

    def __call__(self, example: Example) -> _Outcome:
        try:
            ids, mask = self.encode(example)
        except InvalidRecord as e:
            if not self.options.skip_invalid:
                raise
            logger.debug("skipped: %s", e)
            return _Outcome(example.id, skip_reason=e.reason)
        return finish_sample(example.id, ids, mask, self.options.max_len)


def finish_sample(sample_id: str, ids: list[int], mask: list[int], max_len: int) -> _Outcome:
    """Drop the untrained tail, truncate to max_len, refuse a sample with nothing to train."""
    assert len(ids) == len(mask), "encoder produced ids and mask of different lengths"
    trained = [i for i, m in enumerate(mask) if m]
    if not trained:
        return _Outcome(sample_id, skip_reason="no_trained_tokens")
    end = trained[-1] + 1
    truncated = end > max_len
    end = min(end, max_len)
    if not any(mask[:end]):
        return _Outcome(sample_id, skip_reason="no_trained_tokens_within_max_len")
    return _Outcome(sample_id, list(ids[:end]), [int(m) for m in mask[:end]], truncated)


_WORKER: SampleEncoder | None = None


def _init_worker(options: _EncodeOptions) -> None:
    global _WORKER  # one encoder per worker process, built once (the tokenizer is not cheap to pickle)
    _WORKER = SampleEncoder(options)


def _encode_in_worker(example: Example) -> _Outcome:
    assert _WORKER is not None
    return _WORKER(example)


def _encode_all(examples: list[Example], options: _EncodeOptions, encoder: SampleEncoder,
                num_proc: int) -> Iterator[_Outcome]:
    if num_proc <= 1 or len(examples) < 2:
        yield from map(encoder, examples)
        return
    context = multiprocessing.get_context("spawn")  # fork after the Rust tokenizer has run can deadlock
    with context.Pool(num_proc, initializer=_init_worker, initargs=(options,)) as pool:
        yield from pool.imap(_encode_in_worker, examples, chunksize=8)


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------

def _read_examples(inputs: list[Path], data_format: str, skip_invalid: bool,
                   stats: PrepareStats) -> list[Example]:
    skipped: Counter[str] = Counter()
    examples: list[Example] = []
    for path in inputs:
        result = read_records(path, skip_invalid=skip_invalid)
        stats.read += len(result.records) + len(result.invalid)
        skipped.update(e.reason for e in result.invalid)
        for record in result.records:
            try:
                examples.extend(parse_record(record, data_format))
            except InvalidRecord as e:
                if not skip_invalid:
                    raise
                skipped[e.reason] += 1
    stats.skipped = dict(skipped)
    return examples


def _check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse early (before any work) what atomic_directory would refuse at the end."""
    if any(output.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"{output}: the output directory is one of the inputs")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        what = "holds another prepared dataset" if (output / META_FILE).exists() else "exists and is not empty"
        raise FileExistsError(f"{output}: {what}; choose another --output or pass --overwrite to replace it")


def prepare_dataset(
    inputs: list[str | os.PathLike] | str | os.PathLike,
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    data_format: str = "chat",
    max_len: int = 2048,
    system_prompt: str | None = None,
    skip_invalid: bool = False,
    num_proc: int = 1,
    chat_template: str | os.PathLike | None = None,
    fim_order: str | None = None,
    fim_tokens: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> PrepareStats:
    """Tokenize `inputs` into a prepared dataset at `output` (see the module docstring); returns the stats.

    chat_template: a Jinja file replacing the tokenizer's template. fim_order: "psm"/"spm" (None: the
    family's own layout). fim_tokens: "PREFIX,SUFFIX,MIDDLE[,TERMINATOR]" overriding auto-detection.
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data format: expected one of {DATA_FORMATS}, got {data_format!r}")
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    if not paths:
        raise ValueError("no input files")
    output = Path(output)
    _check_output(output, paths, overwrite)
    template_text = None
    if chat_template is not None:
        from eaglespec.data.chat import load_chat_template

        template_text = load_chat_template(chat_template)
    options = _EncodeOptions(data_format, str(tokenizer), max_len, skip_invalid, template_text, system_prompt,
                             fim_tokens, fim_order)
    encoder = SampleEncoder(options)  # fails fast: no chat template, no FIM tokens
    stats = PrepareStats()
    try:
        examples = _read_examples(paths, data_format, skip_invalid, stats)
        stats.samples = len(examples)
        columns = _collect(examples, options, encoder, num_proc, stats, progress)
    except InvalidRecord as e:
        raise InvalidRecord(f"{e} (--skip-invalid skips such records and counts them by reason in {STATS_FILE})",
                            e.reason) from e
    if not columns["id"]:
        raise ValueError(f"no sample has a trained token (read {stats.read} records, skipped: {stats.skipped}); "
                         "check --data-format and the input files")
    meta = _meta(options, encoder, paths, template_text)
    _write(output, columns, stats, meta, overwrite)
    logger.info("prepared %d samples (%d skipped, %d truncated), %d tokens, %d trained -> %s", stats.kept,
                sum(stats.skipped.values()), stats.truncated, stats.total_tokens, stats.trained_tokens, output)
    return stats


def _collect(examples: list[Example], options: _EncodeOptions, encoder: SampleEncoder, num_proc: int,
             stats: PrepareStats, progress: bool) -> dict[str, list]:
    columns: dict[str, list] = {"id": [], "input_ids": [], "loss_mask": []}
    skipped = Counter(stats.skipped)
    outcomes = _encode_all(examples, options, encoder, num_proc)
    if progress:
        from tqdm import tqdm

        outcomes = tqdm(outcomes, total=len(examples), desc="prepare", unit="sample")
    for outcome in outcomes:
        if outcome.skip_reason is not None:
            skipped[outcome.skip_reason] += 1
            continue
        columns["id"].append(outcome.id)
        columns["input_ids"].append(outcome.input_ids)
        columns["loss_mask"].append(outcome.loss_mask)
        stats.kept += 1
        stats.truncated += int(outcome.truncated)
        stats.total_tokens += len(outcome.input_ids)
        stats.trained_tokens += sum(outcome.loss_mask)
    stats.skipped = dict(skipped)
    return columns


def _meta(options: _EncodeOptions, encoder: SampleEncoder, paths: list[Path], template: str | None) -> PrepareMeta:
    from eaglespec.models import resolve_model_path

    fim = asdict(encoder.fim) if encoder.fim is not None else None
    return PrepareMeta(
        data_format=options.data_format,
        tokenizer=str(Path(options.tokenizer).resolve()) if Path(options.tokenizer).is_dir() else options.tokenizer,
        tokenizer_hash=tokenizer_hash(resolve_model_path(options.tokenizer), encoder.tokenizer),
        max_len=options.max_len,
        inputs=[{"path": str(p.resolve()), "sha256": file_sha256(p) if p.is_file() else None} for p in paths],
        chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if template else None,
        system_prompt=options.system_prompt,
        fim_tokens=fim,
    )


def _write(output: Path, columns: dict[str, list], stats: PrepareStats, meta: PrepareMeta, overwrite: bool) -> None:
    import datasets

    from eaglespec._io import atomic_directory

    features = datasets.Features({
        "id": datasets.Value("string"),
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "loss_mask": datasets.Sequence(datasets.Value("int8")),
    })
    dataset = datasets.Dataset.from_dict(columns, features=features)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
        (tmp / STATS_FILE).write_text(json.dumps(asdict(stats), indent=2) + "\n")
        (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")  # last: marks completion


def load_prepared(path: str | os.PathLike) -> tuple[Any, PrepareMeta]:
    """(datasets.Dataset with id / input_ids / loss_mask, its PrepareMeta) of a prepared directory."""
    import datasets

    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no {META_FILE}); create one with "
                                "`eaglespec prepare`")
    meta_dict = json.loads((path / META_FILE).read_text())
    if meta_dict.get("version") != META_VERSION:
        raise ValueError(f"{path}: prepared with format version {meta_dict.get('version')}, this eaglespec reads "
                         f"version {META_VERSION}; prepare the data again")
    return datasets.load_from_disk(str(path)), PrepareMeta(**meta_dict)


def load_stats(path: str | os.PathLike) -> PrepareStats:
    return PrepareStats(**json.loads((Path(path) / STATS_FILE).read_text()))
