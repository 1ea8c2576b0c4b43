"""Multi-process training: launch detection, the process group, data sharding, rank-0 logging and
the DDP engine. The DeepSpeed engine lives in `deepspeed_engine.py`.

Launchers set the environment this module reads (the model code knows nothing about ranks):

    torchrun --nproc_per_node N -m eaglespec train ...        RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    deepspeed --num_gpus N --module eaglespec train ...        the same, plus a `--local_rank=K` argument
                                                               (accepted and ignored by `eaglespec`)

Backends: NCCL when CUDA is available (each process takes the GPU `LOCAL_RANK`), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from eaglespec._io import TMP_PREFIX, atomic_directory

logger = logging.getLogger(__name__)

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# A collective that waits longer than this has lost a peer (a crashed rank): fail instead of hanging.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in the job (single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by the launcher)") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun or the deepspeed launcher.

    None of them set -> a single process. RANK and WORLD_SIZE must come together; LOCAL_RANK
    defaults to RANK (one node).
    """
    env = os.environ if environ is None else environ
    present = [k for k in LAUNCH_VARS if k in env]
    if not present:
        return LaunchInfo()
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
    if missing:
        raise ValueError(
            f"launcher environment is incomplete: {', '.join(present)} set but {', '.join(missing)} missing "
            "(launch with torchrun or deepspeed, or unset these variables for a single process)"
        )
    rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"launcher environment: RANK={rank} WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE")
    return LaunchInfo(rank, world_size, local_rank)


def init_distributed(launch: LaunchInfo, require_group: bool = False) -> torch.device:
    """Join the process group and return this rank's device.

    CUDA: device cuda:LOCAL_RANK and the NCCL backend. CPU: gloo. A single process starts no group
    unless `require_group` (DeepSpeed needs one even alone: a 1-rank group on a local file store).
    """
    if torch.cuda.is_available():
        if launch.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={launch.local_rank} but only {torch.cuda.device_count()} CUDA devices are visible "
                "(launch at most one process per GPU)"
            )
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if (launch.is_distributed or require_group) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        init_method = None if launch.is_distributed else f"file://{tempfile.mktemp(prefix='eaglespec-pg-')}"
        dist.init_process_group(
            backend, init_method=init_method, rank=launch.rank, world_size=launch.world_size,
            timeout=PROCESS_GROUP_TIMEOUT, device_id=device if device.type == "cuda" else None,
        )
        log_rank_zero(logger, "process group: %s, %d rank(s)", backend, launch.world_size)
    return device


def destroy_distributed() -> None:
    """Leave the process group (no-op when none was started).

    Engines that are garbage but still referenced from cycles (DDP's reducer holds the group) are
    collected first: a gloo group that outlives destroy_process_group is torn down at interpreter exit
    instead, where its worker threads can abort the process (SIGABRT after a finished run)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def log_rank_zero(log: logging.Logger, msg: str, *args, level: int = logging.INFO) -> None:
    """Log on rank 0 only (every rank computes the same line; one copy is enough)."""
    if current_rank() == 0:
        log.log(level, msg, *args)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all ranks (a new tensor; `t` itself unchanged). Single process: a copy."""
    out = all_reduce_sum(t)
    if dist.is_available() and dist.is_initialized():
        out /= dist.get_world_size()
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor on t's device). Use for exact sums/counts of metrics.
    NCCL reduces GPU tensors only: CPU tensors (metric sums, flags) travel through this rank's GPU."""
    out = t.detach().clone()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return out
    if dist.get_backend() == dist.Backend.NCCL and out.device.type != "cuda":
        on_gpu = out.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return on_gpu.to(t.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank (any picklable object)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def atomic_directory_all_ranks(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """`eaglespec._io.atomic_directory` for a collective write: every rank gets the SAME temp dir
    (rank 0 creates it and broadcasts its name), all ranks write their parts, and after a barrier
    rank 0 renames it onto `path`. Single process: plain `atomic_directory`.

    Multi-node: `path` must be on a file system all nodes share.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        with atomic_directory(path, overwrite=overwrite) as tmp:
            yield tmp
        return
    path = Path(path)
    tmp_name, error = None, None
    if dist.get_rank() == 0:
        try:
            if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
                raise FileExistsError(f"{path}: already exists and is not empty")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_name = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    tmp_name, error = broadcast_object((tmp_name, error))
    if error is not None:
        raise OSError(f"rank 0 could not create a temp directory beside {path}: {error}")
    tmp = Path(tmp_name)
    ok = torch.tensor([1], dtype=torch.int32)
    try:
        yield tmp
    except BaseException:
        ok.zero_()
        raise
    finally:
        # Every rank must reach this collective (also on error), or the others would hang.
        ok = _all_ranks_ok(ok)
        if dist.get_rank() == 0:
            _finish_atomic(tmp, path, ok)
        dist.barrier()
    if not ok:
        raise RuntimeError(f"{path}: another rank failed while writing; nothing was saved")


def _all_ranks_ok(ok: torch.Tensor) -> bool:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = ok.to(device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _finish_atomic(tmp: Path, path: Path, ok: bool) -> None:
    if not ok:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.chmod(0o755)
    old = path.parent / f"{TMP_PREFIX}old-{path.name}.{os.getpid()}" if path.exists() else None
    if old is not None:
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def trainable_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that get gradients (the draft's frozen embedding is not among them)."""
    return [p for p in module.parameters() if p.requires_grad]


class DDPEngine:
    """Data parallel with torch DDP: the single-process PlainEngine (AdamW, warmup/decay, clipping,
    loss scaling, state files) applied to a DDP-wrapped draft. The frozen target is not wrapped.

    Gradient accumulation: the loop calls `backward` on every micro-batch and `step` once per
    `grad_accum` micro-batches. Every micro-batch but the last of a group runs under `no_sync()`
    (the forward too, which is why the flag is set before the next forward); if the loop steps
    after a shorter group (end of an epoch), `step` averages the local gradients itself, so ranks
    never diverge.
    """

    whole_accumulation_groups = False  # a short last group is stepped (after averaging, see above)

    def __init__(self, plain, grad_accum: int, launch: LaunchInfo, module: nn.Module | None = None):
        """plain: a PlainEngine over the draft (already on this rank's device). module: what the
        training forward calls (default: the draft); it must own the draft's parameters."""
        if grad_accum < 1:
            raise ValueError(f"grad_accum: expected >= 1, got {grad_accum}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DDPEngine needs an initialised process group (call init_distributed first)")
        self._plain = plain
        self.model = plain.model
        self.rank, self.world_size = launch.rank, launch.world_size
        self.grad_accum = grad_accum
        device = plain.device
        # Wrapping broadcasts rank 0's parameters and buffers: every rank starts from the same draft.
        self._ddp = nn.parallel.DistributedDataParallel(
            module if module is not None else self.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The draft's buffers (d2t, t2d) never change: no per-forward broadcast, so forwards
            # (several per step in training-time test, uneven counts in evaluation) need no peers.
            broadcast_buffers=False,
        )
        self._params = trainable_parameters(self.model)
        self._micro = 0  # backward calls since the last step
        self._last_synced = True
        self._no_sync: contextlib.ExitStack | None = None
        self._prepare_next_micro_step()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _prepare_next_micro_step(self) -> None:
        """Sync gradients only on the last micro-batch of a group; open/close `no_sync()` accordingly."""
        sync = (self._micro + 1) % self.grad_accum == 0
        if sync and self._no_sync is not None:
            self._no_sync.close()
            self._no_sync = None
        elif not sync and self._no_sync is None:
            self._no_sync = contextlib.ExitStack()
            self._no_sync.enter_context(self._ddp.no_sync())

    def forward_module(self) -> nn.Module:
        return self._ddp

    def autocast(self) -> contextlib.AbstractContextManager:
        return self._plain.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self._last_synced = self._no_sync is None
        self._plain.backward(loss)
        self._micro += 1
        self._prepare_next_micro_step()

    def _average_local_gradients(self) -> None:
        """All-reduce (mean) the gradients of a group that ended under no_sync(). Averaging is linear,
        so parts already averaged by a synced backward stay correct."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def step(self) -> float | None:
        if not self._last_synced:
            self._average_local_gradients()
        self._micro = 0
        self._last_synced = True
        self._prepare_next_micro_step()
        return self._plain.step()

    def lr(self) -> float:
        return self._plain.lr()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean(t)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t)

    def barrier(self) -> None:
        barrier()

    @contextlib.contextmanager
    def full_parameters(self, modify: bool = False) -> Iterator[nn.Module]:
        """The draft with full weights (every DDP rank holds them all)."""
        yield self.model

    def save_state(self, directory: Path) -> None:
        """Optimizer / scheduler state (identical on every rank): rank 0 writes it."""
        if self.is_main:
            self._plain.save_state(directory)

    def load_state(self, directory: Path) -> None:
        self._plain.load_state(directory)
