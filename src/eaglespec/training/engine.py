"""How one optimizer step is executed: the Engine protocol, the single-process PlainEngine, the
DeepSpeed config check and the engine factory.

The training loop only talks to an Engine, so data-parallel engines (DDP, DeepSpeed; see
`training.distributed`) plug in behind `make_engine` without touching the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from eaglespec.training.schedule import OptimizerConfig, build_optimizer

logger = logging.getLogger(__name__)

ENGINE_STATE_FILE = "engine_state.pt"
PRECISIONS = ("bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class Engine(Protocol):
    model: nn.Module  # the draft (unwrapped)
    rank: int
    world_size: int
    # True when the engine owns the accumulation boundary (DeepSpeed): the loop then runs whole groups only.
    whole_accumulation_groups: bool

    @property
    def is_main(self) -> bool: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float | None:
        """clip + optimizer.step + scheduler.step + zero_grad; returns the pre-clip grad norm.
        Raises FloatingPointError (and does not step) when the gradients are not finite."""
        ...

    def lr(self) -> float: ...

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor: ...

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def barrier(self) -> None: ...

    def save_state(self, directory: Path) -> None:
        """optimizer / scheduler / engine state into `directory` (called on every rank)."""
        ...

    def load_state(self, directory: Path) -> None: ...

    def forward_module(self) -> nn.Module:
        """What to call for the training forward (DDP / DeepSpeed wrapper); may be called several
        times before one backward (training-time test runs one forward per step)."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def full_parameters(self, modify: bool = False) -> contextlib.AbstractContextManager[nn.Module]:
        """The draft with complete weights for saving / loading (ZeRO-3 gathers its partitions;
        collective: every rank enters). modify=True: rank 0's changes are kept on exit."""
        ...


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        logger.warning("fp16 autocast needs a GPU; using bf16 on %s instead", device.type)
        return "bf16"
    return precision


class PlainEngine:
    """One process, one device: AdamW + warmup/decay schedule, optional fp16 loss scaling."""

    rank, world_size = 0, 1
    whole_accumulation_groups = False  # a short last group of an epoch is stepped on its own

    def __init__(self, model: nn.Module, cfg: OptimizerConfig, precision: str = "fp32"):
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.optimizer, self.scheduler = build_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self._params = [p for p in model.parameters() if p.requires_grad]

    @property
    def is_main(self) -> bool:
        return True

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def forward_module(self) -> nn.Module:
        return self.model

    @contextlib.contextmanager
    def full_parameters(self, modify: bool = False):
        yield self.model

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> float | None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None]))
        if not math.isfinite(norm) and self.scaler is None:
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"gradient norm is {norm}")
        if self.cfg.grad_clip > 0:
            if self.cfg.clip_mode == "value":
                torch.nn.utils.clip_grad_value_(self._params, self.cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        if self.scaler:  # skips the step on inf/nan gradients and lowers the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def save_state(self, directory: Path) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, Path(directory) / ENGINE_STATE_FILE)

    def load_state(self, directory: Path) -> None:
        path = Path(directory) / ENGINE_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: optimizer state missing; {directory} is not a resumable checkpoint")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


# --------------------------------------------------------------------------------------------------
@dataclass
class DeepSpeedSettings:
    config: dict  # the ds_config with "auto" values filled in
    path: Path
    precision: str  # what the config enables: fp16 | bf16 | fp32


def launch_world_size() -> int:
    """World size set by torchrun / the deepspeed launcher (1 when run as a plain process)."""
    from eaglespec.training.distributed import detect_launch

    return detect_launch().world_size


def load_ds_settings(path: str | Path, batch_size: int, grad_accum: int, world_size: int, grad_clip: float,
                   lr: float | None = None) -> DeepSpeedSettings:
    """Read a DeepSpeed JSON config and check it agrees with --bs / --grad-accum / the world size, before
    anything is loaded ("auto" filled from the flags; on CPU fp16 -> bf16). Rules: `training.deepspeed_engine`."""
    from eaglespec.training.deepspeed_engine import ds_config_precision, load_ds_config

    cfg = load_ds_config(path, batch_size, grad_accum, world_size, grad_clip, lr)
    return DeepSpeedSettings(cfg, Path(path), ds_config_precision(cfg))


def make_engine(model: nn.Module, optimizer_cfg: OptimizerConfig, ds_config: DeepSpeedSettings | None = None,
                precision: str = "fp32", grad_accum: int = 1) -> Engine:
    """DeepSpeedEngine with a ds_config; DDPEngine when launched with WORLD_SIZE > 1; else PlainEngine.
    The process group must already be up (`training.distributed.init_distributed`)."""
    from eaglespec.training.distributed import DDPEngine, detect_launch

    launch = detect_launch()
    if ds_config is not None:
        from eaglespec.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, ds_config.config, optimizer_cfg, launch)
    plain = PlainEngine(model, optimizer_cfg, precision)
    if launch.is_distributed:
        return DDPEngine(plain, grad_accum, launch)
    return plain
