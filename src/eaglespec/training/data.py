"""Training data: token datasets, padding collate, deterministic splits, and the target-side batch
(features + target logits) computed online by the frozen target or read from dumped features.

Alignment (draft position t takes token x_{t+1} and feature f_t, and predicts x_{t+2}): a batch
keeps the full sequences; `training.methods` shifts them. Example, T = 5 tokens x0..x4:
    draft position t:       0   1   2   3   (4: padding)
    input token x_{t+1}:    x1  x2  x3  x4
    hidden f_t:             f0  f1  f2  f3
    target row t+1:         f1  f2  f3  f4   (feature / logits predicting x_{t+2})
    trained iff loss_mask[t+2]: m2 m3 m4 -
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from eaglespec.models.target import TargetModel

logger = logging.getLogger(__name__)

PAD_ID = 0  # padding token id in batches; padded positions are masked out of attention targets and losses


class TokenDataset(Protocol):
    """What the trainer reads: items with `input_ids` and `loss_mask` (and, offline, hidden states)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, T] long, right-padded with PAD_ID
    loss_mask: torch.Tensor  # [B, T] long, 0 on padding
    valid: torch.Tensor  # [B, T] bool, False on padding
    last_hidden: torch.Tensor | None = None  # [B, T, H] offline features (EAGLE-1 feature, lm_head input)
    aux_hidden: torch.Tensor | None = None  # [B, T, 3H] offline EAGLE-3 features
    target_argmax: torch.Tensor | None = None  # [B, T] long: the target's argmax token, stored by dump-features

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum())


@dataclass
class TargetBatch:
    """Everything one training step needs from the target, in float32.

    `logits` may be left out (None) when `lm_head` is given: the EAGLE-3 loss then asks for the target
    logits of the few rows it trains on (`rows_logits`), over the draft vocabulary only, instead of a
    [B, T, V] tensor (for a 49k-token target that full projection costs more than the draft itself)."""

    input_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T]
    valid: torch.Tensor  # [B, T] bool
    features: torch.Tensor  # [B, T, F]: the method's target features (EAGLE-1 last hidden, EAGLE-3 aux concat)
    last_hidden: torch.Tensor  # [B, T, H]
    logits: torch.Tensor | None  # [B, T, V]: target logits at each position (predict x_{t+1}); None: lazy
    lm_head: torch.nn.Module | None = None  # the target's lm_head, for lazy logits
    argmax: torch.Tensor | None = None  # [B, T] long: the target's argmax token per position, when known

    def full_logits(self) -> torch.Tensor:
        """[B, T, V] fp32 target logits (computed now when lazy)."""
        if self.logits is not None:
            return self.logits
        return self._project(self.last_hidden, None)

    def rows_logits(self, b: torch.Tensor, t: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """[M, V] (or [M, len(vocab)]) fp32 target logits at positions (b[i], t[i]); `vocab`: the target ids
        (columns) to keep, e.g. the draft vocabulary."""
        if self.logits is not None:
            rows = self.logits[b, t]
            return rows if vocab is None else rows[:, vocab]
        return self._project(self.last_hidden[b, t], vocab)

    def rows_argmax(self, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[M] the target's argmax token at positions (b[i], t[i]) over its whole vocabulary."""
        if self.argmax is not None:
            return self.argmax[b, t]
        return self.rows_logits(b, t).argmax(-1)

    def _project(self, hidden: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
        """lm_head rows in fp32 (a 16-bit target's weights are widened: soft targets keep fp32 precision)."""
        if self.lm_head is None:
            raise ValueError("TargetBatch without logits needs the target's lm_head")
        weight = self.lm_head.weight
        weight = (weight if vocab is None else weight[vocab]).float()
        bias = getattr(self.lm_head, "bias", None)
        if bias is not None:
            bias = (bias if vocab is None else bias[vocab]).float()
        return torch.nn.functional.linear(hidden.float(), weight, bias)


# --------------------------------------------------------------------------------------------------
def load_prepared_dataset(path: str | Path) -> TokenDataset:
    """A prepared dataset directory of `eaglespec prepare` (columns input_ids, loss_mask), torch-formatted."""
    from eaglespec.data import load_prepared

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: prepared dataset directory not found")
    dataset, _meta = load_prepared(path)
    missing = {"input_ids", "loss_mask"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{path}: prepared dataset lacks columns {sorted(missing)} (has {dataset.column_names})")
    return dataset.with_format("torch", columns=["input_ids", "loss_mask"])


def sample_tokens(dataset: TokenDataset, index: int) -> dict:
    """input_ids and loss_mask of one sample; feature datasets read them without their features."""
    read = getattr(dataset, "sample_tokens", None)
    return read(index) if read is not None else dataset[index]


def trained_token_count(dataset: TokenDataset, indices: list[int], max_len: int) -> int:
    """Number of loss-masked tokens the draft can train on (positions >= 2 within max_len)."""
    total = 0
    for i in indices:
        mask = torch.as_tensor(sample_tokens(dataset, i)["loss_mask"])[:max_len]
        total += int(mask[2:].sum())  # the first two tokens are never a draft prediction target
    return total


# The split rule `split_indices` implements, recorded in training checkpoints: runs saved before it (a seeded
# shuffle of the indices) split differently, so --resume refuses them instead of mixing two splits.
SPLIT_RULE = "token-hash"


def _split_key(input_ids, seed: int) -> float:
    """A sample's place in [0, 1) for the split: a keyed hash of its tokens, so it depends on nothing else."""
    tokens = torch.as_tensor(input_ids, dtype=torch.int64).numpy().tobytes()
    digest = hashlib.blake2b(tokens, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def split_indices(dataset: TokenDataset, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/test split: a sample is a test sample iff the seeded hash of its tokens falls
    below `test_fraction`. A sample's side depends only on its tokens and the seed, so it stays put when data
    is added or reordered (an `--init-from` run on more data never tests on what it trained on), and
    duplicates land on the same side. About n * fraction test samples; at least one on each side when
    fraction > 0 and n > 1 (the lowest / highest keys)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test split: expected a fraction in [0, 1), got {test_fraction}")
    n = len(dataset)
    if test_fraction == 0 or n < 2:
        return list(range(n)), []
    keys = [_split_key(sample_tokens(dataset, i)["input_ids"], seed) for i in range(n)]
    test = {i for i in range(n) if keys[i] < test_fraction}
    if not test:
        test = {min(range(n), key=keys.__getitem__)}
    elif len(test) == n:
        test.discard(max(range(n), key=keys.__getitem__))
    return [i for i in range(n) if i not in test], sorted(test)


def collate(items: list[dict], max_len: int, pad_id: int = PAD_ID) -> TokenBatch:
    """Right-pad (and truncate to max_len) a list of dataset items into a TokenBatch."""
    ids = [torch.as_tensor(it["input_ids"], dtype=torch.long)[:max_len] for it in items]
    T = max(len(x) for x in ids)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, (it, x) in enumerate(zip(items, ids)):
        n = len(x)
        input_ids[b, :n] = x
        loss_mask[b, :n] = torch.as_tensor(it["loss_mask"], dtype=torch.long)[:n]
        valid[b, :n] = True
    batch = TokenBatch(input_ids, loss_mask, valid)
    for key in ("last_hidden", "aux_hidden", "target_argmax"):
        if items[0].get(key) is not None:
            feats = [torch.as_tensor(it[key])[:max_len] for it in items]
            out = torch.zeros((B, T, *feats[0].shape[1:]), dtype=feats[0].dtype)
            for b, f in enumerate(feats):
                out[b, : len(f)] = f
            setattr(batch, key, out)
    return batch


# Seeds of (seed, epoch) pairs never collide while epochs < this prime.
EPOCH_SEED_STRIDE = 1_000_003


def epoch_order(indices: list[int], epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The item order of an epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    order = list(indices)
    if shuffle:
        random.Random(seed * EPOCH_SEED_STRIDE + epoch).shuffle(order)
    return order


LENGTH_GROUP_BATCHES = 32  # --group-by-length: batches per group sorted by length


def sample_length(dataset: TokenDataset, index: int) -> int:
    """Tokens of one sample (feature datasets answer from the shard header, without reading it)."""
    length = getattr(dataset, "sample_length", None)
    return length(index) if length is not None else len(dataset[index]["input_ids"])


def length_grouped_order(order: list[int], lengths: dict[int, int], batch_size: int, epoch: int,
                         seed: int) -> list[int]:
    """`order` regrouped so that each batch holds samples of similar length (less padding): consecutive
    groups of LENGTH_GROUP_BATCHES batches are sorted by length and cut into batches, the full batches
    are shuffled (seeded by seed and epoch) and a short last batch stays last. Same items, same batch count."""
    group = LENGTH_GROUP_BATCHES * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: -lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    random.Random(seed * EPOCH_SEED_STRIDE + epoch + 1).shuffle(batches)
    return [i for batch in batches + tail for i in batch]


def iterate_batches(
    dataset: TokenDataset,
    order: list[int],
    batch_size: int,
    max_len: int,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
) -> Iterator[TokenBatch]:
    """Batches of `order` (rank r takes every world_size-th batch), skipping the first `skip_batches`."""
    starts = _rank_batch_starts(len(order), batch_size, rank, world_size)
    for start in starts[skip_batches:]:
        yield collate([dataset[i] for i in order[start : start + batch_size]], max_len)


def _rank_batch_starts(n_items: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Start offsets of rank `rank`'s batches. Every rank gets the SAME number of batches (each
    backward and each ZeRO-3 forward is a collective: an extra batch on one rank would hang the
    others), so the first batches are repeated to fill the last round, as DistributedSampler does."""
    starts = list(range(0, n_items, batch_size))
    if starts and len(starts) % world_size:
        starts += (starts * world_size)[: world_size - len(starts) % world_size]
    return starts[rank::world_size]


def num_batches(n_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> int:
    return len(_rank_batch_starts(n_items, batch_size, rank, world_size))


# --------------------------------------------------------------------------------------------------
class OnlineTargetSource:
    """Runs the frozen target on each batch (EAGLE-3: with its aux layer ids)."""

    def __init__(self, target: TargetModel, method: str, aux_layer_ids: list[int] | None, device: torch.device):
        self.target, self.method, self.aux_layer_ids, self.device = target, method, aux_layer_ids, device

    @torch.no_grad()
    def __call__(self, batch: TokenBatch) -> TargetBatch:
        ids = batch.input_ids.to(self.device)
        valid = batch.valid.to(self.device)
        out = self.target(ids, attention_mask=valid.long(), aux_layer_ids=self.aux_layer_ids if self.method == "eagle3" else None)
        last = out.last_hidden.float()
        return TargetBatch(
            input_ids=ids, loss_mask=batch.loss_mask.to(self.device), valid=valid,
            features=out.features(self.method).float(), last_hidden=last, logits=out.logits.float(),
        )


class OfflineFeatureSource:
    """Reads dumped features; target logits = the target's lm_head(last_hidden)."""

    def __init__(self, target: TargetModel, method: str, device: torch.device):
        self.target, self.method, self.device = target, method, device

    @torch.no_grad()
    def __call__(self, batch: TokenBatch) -> TargetBatch:
        if batch.last_hidden is None or (self.method == "eagle3" and batch.aux_hidden is None):
            raise ValueError(f"offline features lack {'aux_hidden' if batch.last_hidden is not None else 'last_hidden'}"
                             f" needed for {self.method} training")
        last = batch.last_hidden.to(self.device)
        lm_head = self.target.lm_head
        # EAGLE-3 trains on the draft vocabulary at loss-masked rows only: its logits are computed lazily.
        logits = lm_head(last.to(lm_head.weight.dtype)).float() if self.method == "eagle1" else None
        features = last if self.method == "eagle1" else batch.aux_hidden.to(self.device)
        argmax = batch.target_argmax.to(self.device) if batch.target_argmax is not None else None
        return TargetBatch(
            input_ids=batch.input_ids.to(self.device), loss_mask=batch.loss_mask.to(self.device),
            valid=batch.valid.to(self.device), features=features.float(), last_hidden=last.float(), logits=logits,
            lm_head=lm_head, argmax=argmax,
        )
