"""Feature dumping: run the frozen target once over a prepared dataset and store what the draft trains on in
the feature store (`eaglespec.data.features`: layout, manifest, reading).

Each shard is written to a temp file and renamed; the manifest (rewritten after every shard) lists only
finished shards, so a killed run resumes after the last one listed. `complete: true` is set last, and
`FeatureDataset` refuses a directory without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eaglespec._io import TMP_PREFIX, atomic_write_text
from eaglespec.data.features import (
    DEFAULT_SHARD_SIZE,
    DTYPE_NAMES,
    DTYPES,
    MANIFEST_NAME,
    FeatureManifest,
    ShardEntry,
    TargetIdentity,
    int8_group,
    quantize_int8,
    shard_name,
)
from eaglespec.models import TargetModel, default_aux_layer_ids
from eaglespec.models.config import METHODS, validate_aux_layer_ids

logger = logging.getLogger(__name__)

INDEX_BYTES = 8  # input_ids and loss_mask are stored as int64
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

# ---------------------------------------------------------------------------------------------------
# Identity of the target and of the data
# ---------------------------------------------------------------------------------------------------

def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def target_identity(target: TargetModel) -> TargetIdentity:
    """Identity of a target: loaded from a directory, hashes config.json and the weight files' names and
    sizes (cheap for 100 GB checkpoints); built in memory, hashes its config and parameter names/shapes."""
    info = target.info()
    model_dir = Path(info.name_or_path) if info.name_or_path else None
    if model_dir is not None and (model_dir / "config.json").is_file():
        config_hash = hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()
        files = sorted(p for p in model_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
        weights_hash = _sha256(json.dumps([[p.name, p.stat().st_size] for p in files]))
    else:
        config_hash = _sha256(target.model.config.to_json_string(use_diff=False))
        params = [[n, list(t.shape)] for n, t in target.model.state_dict().items()]
        weights_hash = _sha256(json.dumps(params))
    return TargetIdentity(**dataclasses.asdict(info), config_sha256=config_hash, weights_sha256=weights_hash)


def check_features_match(
    manifest: FeatureManifest | Mapping[str, Any],
    target: TargetModel,
    method: str,
    aux_layer_ids: list[int] | None = None,
) -> None:
    """Raise ValueError naming every difference between stored features and the (target, method,
    aux ids) a training run wants to use them with. aux_layer_ids None = the target's defaults."""
    if not isinstance(manifest, FeatureManifest):
        manifest = FeatureManifest.from_dict(manifest)
    have, want = manifest.target, target_identity(target)
    problems = [f"{name}: features have {getattr(have, name)!r}, target has {getattr(want, name)!r}"
                for name in ("model_type", "hidden_size", "vocab_size", "num_hidden_layers")
                if getattr(have, name) != getattr(want, name)]
    if have.config_sha256 != want.config_sha256:
        problems.append("model config (config.json hash) differs")
    if have.weights_sha256 != want.weights_sha256:
        problems.append("model weights (weight file names/sizes) differ")
    if manifest.method != method and not (method == "eagle1" and manifest.method == "eagle3"):
        # EAGLE-3 features hold last_hidden too, so one dump serves both methods (e.g. to compare them)
        problems.append(f"method: features were dumped for {manifest.method!r}, training wants {method!r}")
    elif method == "eagle3":
        wanted = list(aux_layer_ids) if aux_layer_ids is not None else default_aux_layer_ids(want.num_hidden_layers)
        if list(manifest.aux_layer_ids) != wanted:
            problems.append(f"aux layer ids: features have {manifest.aux_layer_ids}, training wants {wanted}")
    if problems:
        raise ValueError(f"features from target {have.name_or_path!r} do not match target {want.name_or_path!r}: "
                         + "; ".join(problems) + ". Dump features again for this target and method")


def _data_fingerprint(dataset) -> str:
    return str(getattr(dataset, "_fingerprint", "") or "")


# ---------------------------------------------------------------------------------------------------
# Planning: what to write, how big it is, what is already done
# ---------------------------------------------------------------------------------------------------

@dataclass
class FeatureDumpPlan:
    output_dir: Path
    manifest: FeatureManifest  # with the shards already finished by an earlier run
    lengths: list[int]  # tokens per sample after max_len truncation
    todo: list[ShardEntry]  # shards still to write
    estimated_bytes: int  # of the shards still to write
    free_bytes: int


def bytes_per_token(hidden_size: int, method: str, dtype: torch.dtype, aux_int8: bool = False) -> int:
    """Storage per token: ids + mask (int64) + last_hidden [H] (+ aux_hidden [3H] and the target's argmax for
    EAGLE-3; int8 aux adds an fp32 scale per group of channels)."""
    if method != "eagle3":
        return 2 * INDEX_BYTES + hidden_size * dtype.itemsize
    aux = 3 * hidden_size * (1 + 4 / int8_group(hidden_size) if aux_int8 else dtype.itemsize)
    return 3 * INDEX_BYTES + hidden_size * dtype.itemsize + int(aux)


def _load_prepared(data_dir: str | os.PathLike):
    import datasets

    data_dir = Path(data_dir)
    if not (data_dir / "dataset_info.json").exists() and not (data_dir / "state.json").exists():
        raise FileNotFoundError(f"{data_dir}: not a prepared dataset (run `eaglespec prepare` first)")
    dataset = datasets.load_from_disk(str(data_dir))
    missing = [c for c in ("input_ids", "loss_mask") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{data_dir}: prepared dataset lacks column(s) {missing}; it has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}: prepared dataset has no samples")
    return dataset


def plan_feature_dump(
    target: TargetModel,
    data_dir: str | os.PathLike,
    method: str,
    output_dir: str | os.PathLike,
    aux_layer_ids: list[int] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_len: int | None = None,
    overwrite: bool = False,
    aux_int8: bool = False,
):
    """Check the arguments and the output directory (resume an earlier run with the same settings; with
    `overwrite`, delete it and start fresh) and size what is left. Returns (plan, dataset). `aux_int8` stores
    EAGLE-3's aux layers as int8 (see eaglespec.data.features), the last hidden state (the targets) in `dtype`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype}")
    if shard_size < 1 or (max_len is not None and max_len < 1):
        raise ValueError(f"shard size and max len must be >= 1, got {shard_size} and {max_len}")
    if method == "eagle1" and (aux_layer_ids or aux_int8):
        raise ValueError("aux layer ids and int8 aux features apply to eagle3 only; eagle1 stores the last hidden "
                         "state")
    if method == "eagle3":
        aux_layer_ids = validate_aux_layer_ids(aux_layer_ids or default_aux_layer_ids(target.num_hidden_layers),
                                               target.num_hidden_layers)
    dataset = _load_prepared(data_dir)
    lengths = _sample_lengths(dataset, max_len)
    fresh = FeatureManifest(
        target=target_identity(target), method=method, aux_layer_ids=list(aux_layer_ids or []),
        dtype=DTYPE_NAMES[dtype], num_samples=len(dataset), shard_size=shard_size, max_len=max_len,
        data_dir=str(Path(data_dir).resolve()), data_fingerprint=_data_fingerprint(dataset),
        aux_int8_group=int8_group(target.hidden_size) if aux_int8 else None,
    )
    output_dir = Path(output_dir)
    manifest = _resume_or_start(output_dir, fresh, overwrite)
    done = len(manifest.shards)
    todo = [ShardEntry(shard_name(k), start, min(start + shard_size, len(dataset)),
                       sum(lengths[start:start + shard_size]))
            for k, start in enumerate(range(0, len(dataset), shard_size)) if k >= done]
    per_token = bytes_per_token(target.hidden_size, method, dtype, aux_int8)
    estimated = sum(s.num_tokens for s in todo) * per_token
    free = shutil.disk_usage(output_dir if output_dir.exists() else _existing_parent(output_dir)).free
    return FeatureDumpPlan(output_dir, manifest, lengths, todo, estimated, free), dataset


def _sample_lengths(dataset, max_len: int | None) -> list[int]:
    """Tokens per sample after truncation, read from the Arrow column without materialising the ids."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.data.column("input_ids")).to_pylist()
    if dataset._indices is not None:  # a select()/shuffle() view: rows are an index mapping
        lengths = [lengths[i] for i in dataset._indices.column(0).to_pylist()]
    return [min(n, max_len) if max_len else n for n in lengths]


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _resume_or_start(output_dir: Path, fresh: FeatureManifest, overwrite: bool) -> FeatureManifest:
    """The manifest to continue from: an earlier run's with the same settings, or `fresh`."""
    manifest_path = output_dir / MANIFEST_NAME
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return fresh
    if not manifest_path.exists():
        raise FileExistsError(f"{output_dir}: exists, is not empty and holds no {MANIFEST_NAME}; "
                              "pick another --output or use --overwrite")
    old = FeatureManifest.load(manifest_path)
    settings = ("method", "aux_layer_ids", "dtype", "num_samples", "shard_size", "max_len", "data_fingerprint",
                "format_version", "aux_int8_group")
    differ = [f"{name}: {getattr(old, name)!r} there, {getattr(fresh, name)!r} now"
              for name in settings if getattr(old, name) != getattr(fresh, name)]
    # The same model moved to another directory is still the same model.
    if dataclasses.replace(old.target, name_or_path="") != dataclasses.replace(fresh.target, name_or_path=""):
        differ.append(f"target: {old.target.name_or_path!r} there, {fresh.target.name_or_path!r} now "
                      "(config, weights or shape differ)")
    if differ:
        raise ValueError(f"{output_dir}: holds features dumped with other settings ({'; '.join(differ)}); "
                         "pick another --output or use --overwrite")
    _remove_unlisted_files(output_dir, old)
    return old


def _remove_unlisted_files(output_dir: Path, manifest: FeatureManifest) -> None:
    """Drop temp files and shards a killed run wrote but did not list in the manifest."""
    listed = {s.file for s in manifest.shards} | {MANIFEST_NAME}
    for p in output_dir.iterdir():
        if p.name not in listed and (p.name.startswith(TMP_PREFIX) or p.name.startswith("shard_")):
            logger.info("%s: removing %s left by an interrupted run", output_dir, p.name)
            p.unlink()


# ---------------------------------------------------------------------------------------------------
# Running the target and writing shards
# ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def compute_features(
    target: TargetModel,
    samples: list[list[int]],
    method: str,
    aux_layer_ids: list[int],
    dtype: torch.dtype,
    batch_size: int = 1,
) -> list[dict[str, torch.Tensor]]:
    """Target features for each sample (list of token ids) -> [{"last_hidden": [T, H], "aux_hidden":
    [T, 3H]}], in input order. Samples are batched by similar length, RIGHT padded with a padding mask:
    causal attention means a real position never sees the padding after it, so each row equals its
    per-sample pass (bit-exact at batch_size 1; to float rounding otherwise)."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    results: list[dict[str, torch.Tensor]] = [{} for _ in samples]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        lengths = [len(samples[i]) for i in rows]
        longest = max(lengths)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :lengths[r]] = torch.tensor(samples[i])
            mask[r, :lengths[r]] = 1
        out = target(ids.to(target.device), attention_mask=None if len(rows) == 1 else mask.to(target.device),
                     aux_layer_ids=aux_layer_ids if method == "eagle3" else None)
        for r, i in enumerate(rows):
            results[i]["last_hidden"] = out.last_hidden[r, :lengths[r]].to("cpu", dtype).contiguous()
            if method == "eagle3":
                results[i]["aux_hidden"] = out.aux_hidden[r, :lengths[r]].to("cpu", dtype).contiguous()
                results[i]["target_argmax"] = out.logits[r, :lengths[r]].argmax(-1).to("cpu", torch.int64)
    return results


def _write_shard(output_dir: Path, shard: ShardEntry, dataset, manifest: FeatureManifest,
                 target: TargetModel, batch_size: int) -> None:
    from safetensors.torch import save_file

    rows = dataset.select_columns(["input_ids", "loss_mask"])[shard.start:shard.end]
    cut = manifest.max_len
    ids = [list(x)[:cut] for x in rows["input_ids"]]
    masks = [list(x)[:cut] for x in rows["loss_mask"]]
    features = compute_features(target, ids, manifest.method, manifest.aux_layer_ids, DTYPES[manifest.dtype],
                                batch_size)
    tensors: dict[str, torch.Tensor] = {}
    for offset, (sample_ids, sample_mask, feats) in enumerate(zip(ids, masks, features)):
        i = shard.start + offset
        tensors[f"{i}.input_ids"] = torch.tensor(sample_ids, dtype=torch.int64)
        tensors[f"{i}.loss_mask"] = torch.tensor(sample_mask, dtype=torch.int64)
        if manifest.aux_int8_group is not None:
            feats["aux_hidden"], tensors[f"{i}.aux_scale"] = quantize_int8(feats["aux_hidden"], manifest.aux_int8_group)
        for name, value in feats.items():
            tensors[f"{i}.{name}"] = value
    tmp = output_dir / f"{TMP_PREFIX}{shard.file}"
    save_file(tensors, str(tmp), metadata={"format": "eaglespec-features", "start": str(shard.start),
                                           "end": str(shard.end)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, output_dir / shard.file)


def run_feature_dump(
    plan: FeatureDumpPlan,
    dataset,
    target: TargetModel,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> FeatureManifest:
    """Write the planned shards (manifest rewritten after each), then mark the manifest complete."""
    if batch_size < 1:
        raise ValueError(f"batch size: expected >= 1, got {batch_size}")
    manifest = plan.manifest
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.output_dir / MANIFEST_NAME, manifest.to_json())
    for shard in plan.todo:
        _write_shard(plan.output_dir, shard, dataset, manifest, target, batch_size)
        manifest.shards.append(shard)
        atomic_write_text(plan.output_dir / MANIFEST_NAME, manifest.to_json())
        if progress is not None:
            progress(shard.end - shard.start)
    manifest.complete = True
    atomic_write_text(plan.output_dir / MANIFEST_NAME, manifest.to_json())
    return manifest


def check_disk_space(plan: FeatureDumpPlan) -> None:
    if plan.estimated_bytes > plan.free_bytes:
        raise ValueError(f"{plan.output_dir}: the features need about {plan.estimated_bytes / 2**30:.2f} GiB but "
                         f"only {plan.free_bytes / 2**30:.2f} GiB is free (use --force to try anyway)")


def dump_features(
    target: TargetModel,
    data_dir: str | os.PathLike,
    method: str,
    output_dir: str | os.PathLike,
    aux_layer_ids: list[int] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 1,
    max_len: int | None = None,
    overwrite: bool = False,
    force: bool = False,
    aux_int8: bool = False,
) -> FeatureManifest:
    """Run `target` once over every sample of the prepared dataset `data_dir` and store the features
    `method` trains on in `output_dir` (resumes an interrupted run with the same settings)."""
    plan, dataset = plan_feature_dump(target, data_dir, method, output_dir, aux_layer_ids, dtype, shard_size,
                                      max_len, overwrite, aux_int8)
    logger.info("%s: %d shards to write, about %.1f MiB", plan.output_dir, len(plan.todo),
                plan.estimated_bytes / 2**20)
    if not force:
        check_disk_space(plan)
    return run_feature_dump(plan, dataset, target, batch_size)
