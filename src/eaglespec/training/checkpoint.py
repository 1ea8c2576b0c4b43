"""Checkpoints: `cpdir/state_{epoch}/` = a loadable draft (config.json + model.safetensors) and,
when resumable, the optimizer / scheduler / RNG / step state.

Every checkpoint is written into a `.tmp-*` directory and renamed into place (eaglespec._io), and
its marker file `checkpoint.json` is written last inside it, so a killed run never leaves a
`state_*` that resume or `EagleDraftModel.from_pretrained` would take for complete.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from eaglespec.models.draft import EMBED_KEY, WEIGHTS_NAME, EagleDraftModel, embedding_from_target
from eaglespec.training.distributed import atomic_directory_all_ranks
from eaglespec.training.engine import Engine
from eaglespec.training.losses import DEFAULT_OBJECTIVE, DEFAULT_TV_WEIGHT

MARKER = "checkpoint.json"
TRAINING_STATE = "training_state.pt"
STATE_DIR = re.compile(r"^state_(\d+)$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs fully done (1-based numbering: after epoch 3, epoch = 3)
    batches_done: int = 0  # micro-batches of epoch `epoch + 1` already trained (a stop mid-epoch)


def checkpoint_dir(cpdir: Path, epoch: int) -> Path:
    return Path(cpdir) / f"state_{epoch}"


def is_save_epoch(epoch: int, num_epochs: int, every: int) -> bool:
    """1-based epochs: every=5 of 20 -> 5, 10, 15, 20; the last epoch is always saved."""
    return epoch == num_epochs or (every > 0 and epoch % every == 0)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_finite(draft: EagleDraftModel) -> None:
    bad = [n for n, p in draft.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"draft parameters {bad[:3]} are not finite; refusing to save a NaN checkpoint")


def save_checkpoint(
    path: Path,
    draft: EagleDraftModel,
    engine: Engine,
    state: TrainState,
    config: dict,
    resumable: bool,
    draft_dtype: torch.dtype | None = None,
    target_embedding: torch.Tensor | None = None,
) -> Path:
    """Write one checkpoint atomically. Called on EVERY rank: all ranks share one temp dir, rank 0
    writes the draft (gathered in full under ZeRO-3) and the training state, `engine.save_state`
    writes each rank's part, and rank 0 renames the dir into place after a barrier. With
    `target_embedding` equal to the draft's (frozen) embedding, the draft file omits it (see
    `EagleDraftModel.save_pretrained`)."""
    with atomic_directory_all_ranks(path, overwrite=True) as tmp:
        with engine.full_parameters() as full:
            if engine.is_main:
                _check_finite(full)
                embedding = {} if target_embedding is None else {"target_embedding": target_embedding}  # EAGLE only
                full.save_pretrained(tmp, dtype=None if resumable else draft_dtype, **embedding)
        if resumable:
            engine.save_state(tmp)
        if engine.is_main:
            if resumable:
                torch.save({"state": asdict(state), "rng": _rng_state(), "config": config}, tmp / TRAINING_STATE)
            marker = {"complete": True, "resumable": resumable, **asdict(state)}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return path


def read_marker(path: Path) -> dict | None:
    """The completion marker of a checkpoint directory, or None if it is absent or unreadable."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("complete") is True else None


def find_latest_complete(cpdir: str | Path, resumable: bool = True) -> Path | None:
    """Newest complete `state_*` checkpoint (by step, then epoch); `.tmp-*` and unmarked dirs are ignored."""
    cpdir = Path(cpdir)
    if not cpdir.is_dir():
        return None
    found = []
    for d in cpdir.iterdir():
        if not d.is_dir() or not STATE_DIR.match(d.name):
            continue
        marker = read_marker(d)
        if marker is None or (resumable and not marker.get("resumable")):
            continue
        if not (d / WEIGHTS_NAME).is_file() or (resumable and not (d / TRAINING_STATE).is_file()):
            continue
        found.append((int(marker.get("step", 0)), int(marker.get("epoch", 0)), d))
    return max(found, key=lambda x: x[:2])[2] if found else None


# Schedule settings added after checkpoints were first written: what a checkpoint without them trained with.
SETTINGS_BEFORE_RECORDED = {"objective": DEFAULT_OBJECTIVE, "tv_weight": DEFAULT_TV_WEIGHT}


def load_checkpoint(path: Path, draft: EagleDraftModel, engine: Engine, config: dict, schedule_keys: tuple[str, ...]) -> TrainState:
    """Restore draft weights, optimizer/scheduler, RNG and step; the schedule-defining settings must match."""
    saved = torch.load(Path(path) / TRAINING_STATE, map_location="cpu", weights_only=False)
    old = {**SETTINGS_BEFORE_RECORDED, **saved["config"]}
    changed = [f"{k}: checkpoint {old.get(k)!r}, now {config.get(k)!r}" for k in schedule_keys if old.get(k) != config.get(k)]
    if changed:
        raise ValueError(f"--resume from {path}: these settings differ from the run being resumed, so the schedule "
                         f"would not be identical: {'; '.join(changed)}")
    weights = load_file(str(Path(path) / WEIGHTS_NAME))
    # A draft saved without its embedding keeps the (frozen) target embedding it was built with.
    bound = {EMBED_KEY} if embedding_from_target(path) else set()
    with engine.full_parameters(modify=True) as full, torch.no_grad():
        for name, tensor in full.state_dict().items():
            if name not in bound:
                tensor.copy_(weights[name].to(tensor.dtype))
    engine.load_state(Path(path))
    _set_rng_state(saved["rng"])
    return TrainState(**saved["state"])
