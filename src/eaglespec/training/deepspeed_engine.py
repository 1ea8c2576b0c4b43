"""DeepSpeed: ds_config validation (before anything is launched or loaded) and the DeepSpeed engine.

How a user's ds_config and our flags combine (the config is the user's; our flags fill its gaps):

- `train_micro_batch_size_per_gpu` / `gradient_accumulation_steps`: absent or "auto" -> `--bs` /
  `--grad-accum`; a different number -> ValueError naming both (we never silently pick one).
- `train_batch_size`: absent or "auto" -> micro * accum * world size; any other value must equal it.
- `gradient_clipping`: absent or "auto" -> our grad clip (norm); a number in the config wins.
- `optimizer` / `scheduler`: when the config defines one, DeepSpeed builds it from the config and
  ours is NOT passed (passing both would silently drop the config's); an "auto" lr becomes `--lr`.
  Otherwise ours are used: AdamW (0.9, 0.95) and the linear warmup/decay of `schedule.py`, exactly
  as the single-process engine. Either way only trainable parameters reach the optimizer, so the
  frozen embedding stays frozen (also under ZeRO-3, where DeepSpeed partitions it but never updates it).
- CPU: an fp16 config is switched to bf16 with a warning (DeepSpeed's CPU accelerator has no fp16).
- Any "auto" left after that is an error that names the field.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from eaglespec._io import read_json
from eaglespec.training.distributed import (
    LaunchInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    log_rank_zero,
    trainable_parameters,
)
from eaglespec.training.schedule import OptimizerConfig, build_optimizer, lr_factor

logger = logging.getLogger(__name__)

AUTO = "auto"
# DeepSpeed writes its checkpoint under <state dir>/<tag>/ (model shards, optimizer partitions, scheduler).
CHECKPOINT_TAG = "deepspeed"


def _deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(
            "--deepspeed_config needs DeepSpeed: pip install 'eaglespec[deepspeed]' "
            f"(import failed: {e})"
        ) from e
    return deepspeed


def read_ds_config(path: str | os.PathLike) -> dict:
    """Parse a ds_config JSON file (errors name the file, line and column)."""
    config = read_json(path, "DeepSpeed config not found")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a DeepSpeed config must be a JSON object, got {type(config).__name__}")
    return config


def _fill_or_check(config: dict, field: str, ours: int, flag: str, source: str) -> None:
    value = config.get(field, AUTO)
    if value == AUTO:
        config[field] = ours
    elif not isinstance(value, int) or isinstance(value, bool) or value != ours:
        raise ValueError(f"{source}: {field}={value!r} does not match {flag} {ours}: make them equal or set it to \"auto\"")


def _switch_fp16_to_bf16(config: dict, source: str) -> None:
    fp16 = config.get("fp16") or {}
    if not fp16.get("enabled", False):
        return
    if (config.get("bf16") or {}).get("enabled", False):
        raise ValueError(f"{source}: both fp16.enabled and bf16.enabled are true; enable at most one")
    logger.warning("%s: fp16 is not supported on CPU; training with bf16 instead (fp16 -> bf16)", source)
    config["fp16"] = dict(fp16, enabled=False)
    config["bf16"] = {"enabled": True}


def _fill_optimizer_lr(config: dict, lr: float) -> None:
    params = (config.get("optimizer") or {}).get("params") or {}
    if params.get("lr") == AUTO:
        params["lr"] = lr


def _remaining_auto(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [f for k, v in node.items() for f in _remaining_auto(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == AUTO else []


def resolve_ds_config(
    config: dict,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    grad_clip: float,
    lr: float | None = None,
    on_cpu: bool | None = None,
    source: str = "ds_config",
) -> dict:
    """Check a ds_config against our flags and fill its "auto" / absent fields (see the module docstring).

    on_cpu: None -> no CUDA device visible. Returns a new dict (`config` is not modified); raises
    ValueError naming the field and both values.
    """
    config = copy.deepcopy(config)
    _fill_or_check(config, "train_micro_batch_size_per_gpu", micro_batch_size, "--bs", source)
    _fill_or_check(config, "gradient_accumulation_steps", grad_accum, "--grad-accum", source)
    expected = micro_batch_size * grad_accum * world_size
    total = config.get("train_batch_size", AUTO)
    if total == AUTO:
        config["train_batch_size"] = expected
    elif total != expected:
        raise ValueError(
            f"{source}: train_batch_size={total!r} but train_micro_batch_size_per_gpu ({micro_batch_size}) * "
            f"gradient_accumulation_steps ({grad_accum}) * world size ({world_size}) = {expected}"
        )
    if config.get("gradient_clipping", AUTO) == AUTO:
        config["gradient_clipping"] = float(grad_clip)
    if lr is not None:
        _fill_optimizer_lr(config, lr)
    if (not torch.cuda.is_available()) if on_cpu is None else on_cpu:
        _switch_fp16_to_bf16(config, source)
    left = _remaining_auto(config)
    if left:
        raise ValueError(f"{source}: cannot resolve \"auto\" for {', '.join(left)}; give a value")
    return config


def load_ds_config(
    path: str | os.PathLike,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    grad_clip: float,
    lr: float | None = None,
    on_cpu: bool | None = None,
) -> dict:
    """Read and resolve a ds_config file. Call it first thing, before models are loaded."""
    config = read_ds_config(path)
    return resolve_ds_config(config, micro_batch_size, grad_accum, world_size, grad_clip, lr, on_cpu, str(path))


def ds_config_precision(config: dict) -> str:
    """What a resolved ds_config trains in: fp16 | bf16 | fp32."""
    if (config.get("fp16") or {}).get("enabled", False):
        return "fp16"
    return "bf16" if (config.get("bf16") or {}).get("enabled", False) else "fp32"


def _uses_zero3(config: dict) -> bool:
    return int((config.get("zero_optimization") or {}).get("stage", 0)) == 3


class DeepSpeedEngine:
    """The Engine protocol on top of `deepspeed.initialize`.

    The loop calls `backward(loss / group_size)` on every micro-batch and `step()` once per group,
    like the PlainEngine. DeepSpeed owns the accumulation boundary (its portable mode): `backward`
    runs DeepSpeed's backward (no second division by the accumulation steps) and DeepSpeed's
    `step`, which updates (clip, optimizer, scheduler, zero_grad) every `gradient_accumulation_steps`
    micro-batches. `step()` returns the gradient norm of the update made since the previous call,
    or None. DeepSpeed's boundary cannot be moved, so the loop runs whole groups only
    (`whole_accumulation_groups`): a trailing partial group of an epoch is dropped, not carried over.
    """

    whole_accumulation_groups = True

    def __init__(self, model: nn.Module, ds_config: dict, optim: OptimizerConfig, launch: LaunchInfo,
                 module: nn.Module | None = None):
        """model: the draft (unwrapped). module: what the training forward calls (default: the draft);
        it must own the draft's parameters. ds_config: resolved by `load_ds_config`."""
        if optim.clip_mode != "norm":
            raise ValueError(f"DeepSpeed clips gradients by norm only; clip_mode={optim.clip_mode!r} is not supported")
        deepspeed = _deepspeed()
        self.model = model
        self.rank, self.world_size = launch.rank, launch.world_size
        self.zero3 = _uses_zero3(ds_config)
        optimizer, scheduler = self._optimizer_and_scheduler(model, ds_config, optim)
        self._ds, _, _, _ = deepspeed.initialize(
            model=module if module is not None else model,
            model_parameters=trainable_parameters(model),
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
        )
        self.grad_accum = int(ds_config["gradient_accumulation_steps"])
        self._fp16 = bool((ds_config.get("fp16") or {}).get("enabled", False))  # fp16 skips overflow steps itself
        self._device_type = next(model.parameters()).device.type
        self._updated, self._grad_norm = False, None

    @staticmethod
    def _optimizer_and_scheduler(model: nn.Module, ds_config: dict, optim: OptimizerConfig):
        """Ours unless the config defines its own (then DeepSpeed builds it; ours must not be passed)."""
        optimizer = scheduler = None
        if "optimizer" in ds_config:
            log_rank_zero(logger, "DeepSpeed: optimizer %r from the ds_config", ds_config["optimizer"].get("type"))
        else:
            optimizer, _ = build_optimizer(model, optim)
        if "scheduler" in ds_config:
            log_rank_zero(logger, "DeepSpeed: scheduler %r from the ds_config", ds_config["scheduler"].get("type"))
        else:
            def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
                return torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda step: lr_factor(step, optim.warmup_steps, optim.total_steps)
                )
        return optimizer, scheduler

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype DeepSpeed keeps the draft in (fp16 / bf16 / fp32)."""
        return next(self.model.parameters()).dtype

    def forward_module(self) -> nn.Module:
        return self._ds

    def autocast(self):
        """fp16 / bf16 configs hold the draft in 16 bits while the target features arrive in fp32:
        autocast runs the matmuls in the draft's dtype."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self._device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self._ds.backward(loss, scale_wrt_gas=False)  # the loop already divided by the group size
        boundary = self._ds.is_gradient_accumulation_boundary()
        self._ds.step()  # updates only at DeepSpeed's accumulation boundary
        if boundary:
            norm = self._ds.get_global_grad_norm()
            self._grad_norm = None if norm is None else float(norm)
            self._updated = True

    def step(self) -> float | None:
        if not self._updated:
            return None
        self._updated = False
        norm = self._grad_norm
        if norm is not None and not math.isfinite(norm) and not self._fp16:
            raise FloatingPointError(f"gradient norm is {norm}")
        return norm

    def lr(self) -> float:
        return float(self._ds.get_lr()[0])

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean(t)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t)

    def barrier(self) -> None:
        barrier()

    @contextmanager
    def full_parameters(self, modify: bool = False) -> Iterator[nn.Module]:
        """The draft with its full weights on every rank. ZeRO-3 gathers the partitions for the
        duration (collective: every rank must enter); with modify=True, rank 0's changes to the
        weights are partitioned back on exit."""
        if not self.zero3:
            yield self.model
            return
        deepspeed = _deepspeed()
        params = list(self.model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
            yield self.model

    def save_state(self, directory: str | os.PathLike) -> None:
        """Collective: every rank writes its optimizer / master-weight partition into `directory`."""
        self._ds.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False)

    def load_state(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / CHECKPOINT_TAG
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no DeepSpeed state in this checkpoint (was it written by another engine?)")
        load_path, _ = self._ds.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
        if load_path is None:
            raise ValueError(f"{path}: DeepSpeed could not load this checkpoint")
