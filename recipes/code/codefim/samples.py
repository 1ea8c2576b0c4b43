"""Training rows: files cut into chunks, about half of the chunks FIM-transformed (PSM or SPM), packed.

A FIM sample is laid out by eaglespec's own `fim_prompt_ids` (the layout `prepare` and `regenerate` use), the
middle and `<|endoftext|>` after it; a plain sample is the chunk and `<|endoftext|>`. Every token is trained
(prefix and suffix as well as the middle, as code models are pretrained); padding is not.

Example (seq_len 8, pad 4): samples [5 6 0] and [7 8 9 0] pack into one row [5 6 0 7 8 9 0 4], labels
[5 6 0 7 8 9 0 -100] (the model shifts labels itself).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from codefim.corpus import SourceFile
from eaglespec.data.fim import FimTokens, detect_fim_tokens, fim_prompt_ids

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)
FIM_SLACK_TOKENS = 8  # 3 FIM tokens + EOS, and room for the cuts (a cut splits a token, mostly into 2); a
# sample that still does not fit is skipped and counted (Rows.skipped, the card)


@dataclass(frozen=True)
class Rows:
    input_ids: np.ndarray  # [rows, seq_len] int64
    labels: np.ndarray  # [rows, seq_len] int64, IGNORE_INDEX at padding
    samples: int
    fim_samples: int
    skipped: int  # samples longer than seq_len after the FIM layout (counted, not trained)
    tokens: int  # trained tokens (labels not IGNORE_INDEX)


def chunk_file(tokenizer: Any, text: str, max_tokens: int) -> list[str]:
    """Consecutive pieces of `text`, cut at line starts, each at most `max_tokens` tokens (a longer single line
    is cut at a token boundary)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    starts = [start for start, _ in encoding["offset_mapping"]]
    chunks, first = [], 0
    while first < len(starts):
        last = min(first + max_tokens, len(starts))
        cut = _line_start_before(text, starts, first, last)
        end_char = starts[cut] if cut < len(starts) else len(text)
        chunks.append(text[starts[first]:end_char])
        first = cut
    return [c for c in chunks if c.strip()]


def _line_start_before(text: str, starts: list[int], first: int, last: int) -> int:
    """The last token index in (first, last] that starts a line (or `last` when the file ends or none does)."""
    if last == len(starts):
        return last
    for index in range(last, first, -1):
        if starts[index] > 0 and text[starts[index] - 1] == "\n":
            return index
    return last


def chunk_corpus(tokenizer: Any, files: Sequence[SourceFile], seq_len: int) -> list[str]:
    budget = seq_len - FIM_SLACK_TOKENS
    return [chunk for f in files for chunk in chunk_file(tokenizer, f.text, budget)]


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) at two uniformly drawn character positions (StarCoder's FIM transformation)."""
    a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
    return text[:a], text[a:b], text[b:]


@dataclass(frozen=True)
class FimLayouts:
    """The tokenizer's FIM tokens in both orders, and how often each sample is transformed."""

    psm: FimTokens
    spm: FimTokens
    fim_rate: float
    spm_rate: float

    @staticmethod
    def of(tokenizer: Any, fim_rate: float, spm_rate: float) -> FimLayouts:
        return FimLayouts(detect_fim_tokens(tokenizer, order="psm"), detect_fim_tokens(tokenizer, order="spm"),
                          fim_rate, spm_rate)


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_fim_sample(tokenizer: Any, prefix: str, middle: str, suffix: str, fim: FimTokens) -> list[int]:
    """[P prefix S suffix M] middle EOS (PSM) or [P S suffix M prefix] middle EOS (SPM), by `fim.order`."""
    middle_ids = tokenizer(middle, add_special_tokens=False)["input_ids"] if middle else []
    return fim_prompt_ids(tokenizer, prefix, suffix, fim) + middle_ids + [fim.terminator_id]


def transform(tokenizer: Any, chunk: str, layouts: FimLayouts, rng: random.Random) -> tuple[list[int], bool]:
    """One chunk as a sample: (ids, whether FIM-transformed). The draws are made in a fixed order, so a
    seeded `rng` gives the same samples everywhere."""
    if rng.random() >= layouts.fim_rate:
        return encode_plain(tokenizer, chunk), False
    fim = layouts.spm if rng.random() < layouts.spm_rate else layouts.psm
    prefix, middle, suffix = fim_split(chunk, rng)
    return encode_fim_sample(tokenizer, prefix, middle, suffix, fim), True


def pack(samples: Sequence[list[int]], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples (each <= seq_len) packed in order into rows, a row closed when the next sample does not fit."""
    rows: list[list[int]] = [[]]
    for ids in samples:
        if len(rows[-1]) + len(ids) > seq_len:
            rows.append([])
        rows[-1].extend(ids)
    rows = [r for r in rows if r]
    input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = labels[i, :len(row)] = row
    return input_ids, labels


def build_rows(tokenizer: Any, chunks: Sequence[str], layouts: FimLayouts, seq_len: int,
               rng: random.Random) -> Rows:
    """The chunks shuffled by `rng`, transformed, length-checked and packed."""
    order = list(range(len(chunks)))
    rng.shuffle(order)
    kept, fim_count, skipped = [], 0, 0
    for index in order:
        ids, is_fim = transform(tokenizer, chunks[index], layouts, rng)
        if len(ids) > seq_len:
            skipped += 1
            continue
        kept.append(ids)
        fim_count += is_fim
    input_ids, labels = pack(kept, seq_len, tokenizer.pad_token_id)
    return Rows(input_ids, labels, len(kept), fim_count, skipped, int((labels != IGNORE_INDEX).sum()))
