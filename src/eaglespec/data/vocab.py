"""EAGLE-3 draft vocabulary: the Vd target tokens trained most often, from a prepared dataset.

Counting is one np.bincount over the trained ids. The result is cached under a key hashing the tokenizer
hash, the data content (ids and masks) and both sizes, so a different model or dataset never reuses a stale
mapping (the reference's ./cache.pt bug). `eaglespec.models.set_draft_vocab` turns `used_tokens` into the
draft's d2t / t2d buffers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class DraftVocab:
    used_tokens: torch.Tensor  # [Vd] int64, sorted ascending target ids kept in the draft vocabulary
    counts: torch.Tensor  # [V] int64, how often each target id is trained (loss_mask == 1)
    coverage: float  # fraction of trained tokens whose id is in used_tokens

    @property
    def vocab_size(self) -> int:
        return int(self.counts.numel())

    @property
    def draft_vocab_size(self) -> int:
        return int(self.used_tokens.numel())


def _flat_column(dataset: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, straight from Arrow (no Python loop over tokens)."""
    import pyarrow as pa

    column = dataset.with_format("arrow")[name]  # honours a select / shuffle view
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]: offsets[-1]], offsets - offsets[0]


def data_content_hash(dataset: Any) -> str:
    """sha256 of the input_ids and loss_mask columns (values and row boundaries)."""
    digest = hashlib.sha256()
    for name in ("input_ids", "loss_mask"):
        values, offsets = _flat_column(dataset, name)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(offsets, dtype=np.int64).tobytes())
    return digest.hexdigest()


def count_trained_tokens(dataset: Any, vocab_size: int) -> torch.Tensor:
    """[V] int64 frequency of every target id over the trained positions."""
    ids, _ = _flat_column(dataset, "input_ids")
    mask, _ = _flat_column(dataset, "loss_mask")
    trained = ids[mask.astype(bool)].astype(np.int64)
    if trained.size and (trained.min() < 0 or trained.max() >= vocab_size):
        raise ValueError(f"the data holds token id {int(trained.max())} but the vocabulary size is {vocab_size}; "
                         "was it prepared with another tokenizer?")
    return torch.from_numpy(np.bincount(trained, minlength=vocab_size))


def select_draft_vocab(counts: torch.Tensor, draft_vocab_size: int) -> DraftVocab:
    """Top-Vd ids by count (ties and never-seen ids: lower id first), sorted ascending."""
    order = torch.from_numpy(np.argsort(-counts.numpy(), kind="stable"))
    used = order[:draft_vocab_size].sort().values
    total = int(counts.sum())
    coverage = float(counts[used].sum()) / total if total else 0.0
    return DraftVocab(used, counts, coverage)


def build_draft_vocab(data: str | os.PathLike | Any, vocab_size: int, draft_vocab_size: int,
                      cache_dir: str | os.PathLike | None = None) -> DraftVocab:
    """Draft vocabulary of a prepared directory (or a datasets.Dataset with input_ids / loss_mask)."""
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"draft vocabulary size must be in 1..{vocab_size} (the target vocabulary), "
                         f"got {draft_vocab_size}")
    dataset, tokenizer_digest = _load(data)
    key = None
    if cache_dir is not None:
        key = _cache_key(tokenizer_digest, data_content_hash(dataset), vocab_size, draft_vocab_size)
        cached = _read_cache(Path(cache_dir), key)
        if cached is not None:
            return cached
    counts = count_trained_tokens(dataset, vocab_size)
    if int(counts.sum()) == 0:
        raise ValueError("the data has no trained tokens (every loss_mask is 0)")
    vocab = select_draft_vocab(counts, draft_vocab_size)
    if key is not None:
        _write_cache(Path(cache_dir), key, vocab)
    return vocab


def _load(data: Any) -> tuple[Any, str]:
    if isinstance(data, (str, os.PathLike)):
        from eaglespec.data.prepare import load_prepared

        dataset, meta = load_prepared(data)
        return dataset, meta.tokenizer_hash
    return data, ""  # an in-memory dataset: its content hash alone identifies it


def _cache_key(tokenizer_digest: str, data_digest: str, vocab_size: int, draft_vocab_size: int) -> str:
    text = json.dumps([CACHE_VERSION, tokenizer_digest, data_digest, vocab_size, draft_vocab_size])
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"draft_vocab-{key[:32]}.pt"


def _read_cache(cache_dir: Path, key: str) -> DraftVocab | None:
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # a damaged cache file is rebuilt, not trusted
        logger.warning("%s: unreadable draft vocabulary cache (%s); rebuilding it", path, e)
        return None
    if state.get("key") != key:
        return None
    logger.info("draft vocabulary from cache %s", path)
    return DraftVocab(state["used_tokens"], state["counts"], float(state["coverage"]))


def _write_cache(cache_dir: Path, key: str, vocab: DraftVocab) -> None:
    import tempfile

    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-draft_vocab.", dir=cache_dir)
    os.close(fd)
    torch.save({"key": key, "used_tokens": vocab.used_tokens, "counts": vocab.counts,
                "coverage": vocab.coverage}, tmp)
    os.replace(tmp, _cache_file(cache_dir, key))
