"""The resumable training state: model, optimizer, position in the data, time spent, loss history.

Written to `<output>/train/checkpoint/` atomically (a new folder renamed over the old one), so an interruption
at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.pt"  # model and optimizer state_dicts


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # next batch of the epoch to train on
    train_seconds: float = 0.0  # wall-clock time in training steps and evaluations, summed over runs
    cpu_seconds: float = 0.0  # process CPU time over the same spans (all threads): the time budget
    tokens: int = 0  # trained tokens seen
    runs: int = 0  # how many times training started or resumed
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    epochs: list[tuple[int, int, int, int]] = field(default_factory=list)  # (epoch, samples, FIM, skipped)


def checkpoint_dir(output: Path) -> Path:
    return output / "train" / "checkpoint"


def save_checkpoint(output: Path, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    final = checkpoint_dir(output)
    fresh, old = final.with_name("checkpoint.new"), final.with_name("checkpoint.old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, fresh / WEIGHTS_FILE)
    (fresh / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)) + "\n")
    if final.exists():
        final.rename(old)
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(output: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState | None:
    """The saved state (model and optimizer restored in place), or None when there is no checkpoint."""
    # an interruption between the two renames of save_checkpoint leaves only checkpoint.old: still whole
    folder = next((f for f in (checkpoint_dir(output), checkpoint_dir(output).with_name("checkpoint.old"))
                   if (f / STATE_FILE).exists()), None)
    if folder is None:
        return None
    raw = json.loads((folder / STATE_FILE).read_text())
    weights = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    model.load_state_dict(weights["model"])
    optimizer.load_state_dict(weights["optimizer"])
    state = TrainState(**raw)
    state.losses = [tuple(x) for x in state.losses]
    state.evals = [tuple(x) for x in state.evals]
    state.epochs = [tuple(x) for x in state.epochs]
    return state
