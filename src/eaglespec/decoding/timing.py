"""Timing bookkeeping of a decoding step, kept out of the algorithm: `with timed(device, record): ...`.

CUDA runs asynchronously, so a phase's wall time only means something once the device has finished the work the
phase queued: `timed` synchronises at the end of the block (unless told not to: a phase whose work the next
timed phase of the same kind waits for anyway) and hands the seconds to `record`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def sync(device: torch.device) -> None:
    """Wait until `device` has run everything queued on it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, record: Callable[[float], None], synchronize: bool = True) -> Iterator[None]:
    """Measure the block's wall time (device work included when `synchronize`) and pass the seconds to `record`."""
    start = time.perf_counter()
    yield
    if synchronize:
        sync(device)
    record(time.perf_counter() - start)
