"""The offline feature store: its layout, its manifest and reading it (`FeatureDataset`). Written by
`eaglespec.distill.features`, which runs the frozen target once over a prepared dataset, so training never runs the
target again.

Layout of an output directory:
    shard_00000.safetensors   samples [0, shard_size): per sample i the tensors
                              "{i}.input_ids" int64 [T], "{i}.loss_mask" int64 [T],
                              "{i}.last_hidden" [T, H] (after the final norm; EAGLE-1 feature and, through
                              the target lm_head, the soft targets of both methods),
                              "{i}.aux_hidden" [T, 3H] (EAGLE-3 only: hidden_states[a|b|c] concatenated;
                              int8 when the manifest's aux_int8_group is set, with "{i}.aux_scale" fp32
                              [T, 3H / group]: each group of channels is scale * int8, absmax rounding)
                              "{i}.target_argmax" int64 [T] (EAGLE-3: the target's argmax token per position,
                              so training needs no full-vocabulary projection; absent in older dumps)
    shard_00001.safetensors   ...
    manifest.json             target identity, method, aux ids, dtype, shards done, `complete`

Each shard is written to a temp file and renamed; the manifest (rewritten after every shard) lists only
finished shards, so a killed run resumes after the last one listed. `complete: true` is set last, and
`FeatureDataset` refuses a directory without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eaglespec.models.config import TargetInfo

FEATURES_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_SIZE = 1000
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
INT8_GROUP = 64  # channels per int8 scale (fewer where the hidden size is not a multiple of it)


def int8_group(hidden_size: int) -> int:
    """Channels per scale of int8 aux features: 64, or the largest divisor of the hidden size below it."""
    return math.gcd(hidden_size, INT8_GROUP)


def quantize_int8(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, C] -> (int8 [T, C], fp32 scale [T, C / group]): per token and group of channels, absmax / 127."""
    g = x.float().view(x.shape[0], x.shape[1] // group, group)
    scale = g.abs().amax(-1).clamp(min=1e-12) / 127
    q = (g / scale.unsqueeze(-1)).round().clamp(-127, 127).to(torch.int8)
    return q.view(x.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of quantize_int8, in `dtype`."""
    groups = scale.shape[1]
    return (q.float().view(q.shape[0], groups, q.shape[1] // groups) * scale.unsqueeze(-1)).view(q.shape).to(dtype)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@dataclass
class TargetIdentity(TargetInfo):
    """Who produced the features: the `TargetInfo` fields plus hashes that change when the model does."""

    config_sha256: str  # of config.json (or of the in-memory config when the model has no directory)
    weights_sha256: str  # of weight file names + sizes (or parameter names + shapes for in-memory models)


@dataclass
class ShardEntry:
    file: str
    start: int  # first sample index (inclusive)
    end: int  # last sample index (exclusive)
    num_tokens: int


@dataclass
class FeatureManifest:
    target: TargetIdentity
    method: str
    aux_layer_ids: list[int]  # HF hidden_states indices (EAGLE-3); [] for EAGLE-1
    dtype: str  # bf16 | fp16 | fp32, of last_hidden / aux_hidden (aux_hidden read back in it when stored int8)
    num_samples: int
    shard_size: int
    max_len: int | None  # samples were truncated to this many tokens (None: as prepared)
    data_dir: str
    data_fingerprint: str  # the prepared dataset's `datasets` fingerprint
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False
    format_version: int = FEATURES_FORMAT_VERSION
    aux_int8_group: int | None = None  # aux_hidden stored as int8 with a scale per token and group of this many

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = MANIFEST_NAME) -> "FeatureManifest":
        try:
            d = dict(d)
            d["target"] = TargetIdentity(**d["target"])
            d["shards"] = [ShardEntry(**s) for s in d.get("shards", [])]
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: not a valid eaglespec feature manifest ({e})") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureManifest":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), source=str(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------

class FeatureDataset(torch.utils.data.Dataset):
    """Samples of a finished `dump_features` directory: dict with input_ids [T], loss_mask [T],
    last_hidden [T, H] and, for EAGLE-3, aux_hidden [T, 3H]. Shards are memory-mapped lazily."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.directory}: no {MANIFEST_NAME}; not an eaglespec feature directory "
                                    "(write one with `eaglespec dump-features`)")
        self.manifest = FeatureManifest.load(manifest_path)
        if not self.manifest.complete:
            raise ValueError(f"{self.directory}: features are incomplete ({len(self.manifest.shards)} shards "
                             "written); rerun the same `eaglespec dump-features` command to finish them")
        missing = [s.file for s in self.manifest.shards if not (self.directory / s.file).exists()]
        if missing:
            raise FileNotFoundError(f"{self.directory}: shard files listed in the manifest are missing: {missing}")
        self._starts = [s.start for s in self.manifest.shards]
        self._handles: dict[str, Any] = {}
        self._keys: dict[str, set[str]] = {}  # tensor names per open shard

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        import bisect

        shard = self.manifest.shards[bisect.bisect_right(self._starts, index) - 1]
        handle = self._open(shard.file)
        names = ["input_ids", "loss_mask", "last_hidden"]
        if self.manifest.method == "eagle3":
            names += ["aux_hidden"] + (["target_argmax"] if f"{index}.target_argmax" in self._keys[shard.file] else [])
        sample = {name: handle.get_tensor(f"{index}.{name}") for name in names}
        if self.manifest.aux_int8_group is not None:
            scale = handle.get_tensor(f"{index}.aux_scale")
            sample["aux_hidden"] = dequantize_int8(sample["aux_hidden"], scale, DTYPES[self.manifest.dtype])
        return sample

    def sample_tokens(self, index: int) -> dict[str, torch.Tensor]:
        """input_ids and loss_mask of sample `index`, without reading its features."""
        import bisect

        shard = self.manifest.shards[bisect.bisect_right(self._starts, index) - 1]
        handle = self._open(shard.file)
        return {name: handle.get_tensor(f"{index}.{name}") for name in ("input_ids", "loss_mask")}

    def sample_length(self, index: int) -> int:
        """Tokens of sample `index`, from the shard header (no tensor is read)."""
        import bisect

        shard = self.manifest.shards[bisect.bisect_right(self._starts, index) - 1]
        return int(self._open(shard.file).get_slice(f"{index}.input_ids").get_shape()[0])

    def _open(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            self._handles[file] = safe_open(str(self.directory / file), framework="pt")
            self._keys[file] = set(self._handles[file].keys())
        return self._handles[file]

    def __getstate__(self) -> dict:
        # DataLoader workers get their own file handles.
        return {**self.__dict__, "_handles": {}, "_keys": {}}


class FeatureDatasets(torch.utils.data.Dataset):
    """Several finished feature directories read as one dataset (e.g. the features of data added later,
    dumped on their own instead of dumping everything again): sample i of the whole is sample i - offset of
    the directory that holds it."""

    def __init__(self, directories: list[str | os.PathLike]):
        if not directories:
            raise ValueError("no feature directory given")
        self.parts = [FeatureDataset(d) for d in directories]
        self._starts = [0]
        for part in self.parts:
            self._starts.append(self._starts[-1] + len(part))

    @property
    def manifests(self) -> list[tuple[Path, FeatureManifest]]:
        return [(part.directory, part.manifest) for part in self.parts]

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[FeatureDataset, int]:
        import bisect

        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self._starts, index) - 1
        return self.parts[k], index - self._starts[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        part, i = self._locate(index)
        return part[i]

    def sample_length(self, index: int) -> int:
        part, i = self._locate(index)
        return part.sample_length(i)

    def sample_tokens(self, index: int) -> dict[str, torch.Tensor]:
        part, i = self._locate(index)
        return part.sample_tokens(i)

