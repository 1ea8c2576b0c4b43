"""The cost model `tune` ranks candidates with, measured on this hardware: the target's forward time by the number
of tokens it verifies (timed in interleaved rounds on top of a cached calibration sequence), the per-step rest of a
real run, and each candidate's figures (tau, propose and forward ms, predicted tokens/s)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig, sync
from eaglespec.decoding.cache import new_cache, truncate

FORWARD_TOKEN_COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
FORWARD_REPEATS = 5


@dataclass
class Candidate:
    tree: dict  # TreeConfig fields
    size: float  # tokens verified per step (root included; with lookup, the mean over the replayed steps)
    predicted_tau: float
    propose_ms: float
    forward_ms: float
    predicted_tokens_per_s: float  # the cost model's figure
    measured_tokens_per_s: float | None = None  # real decoding of the calibration prompts (finalists only)
    measured_tau: float | None = None


@torch.no_grad()
def time_forwards(generator: SpeculativeGenerator, sequence: list[int], counts=FORWARD_TOKEN_COUNTS,
                  repeats: int | None = None) -> dict[int, float]:
    """Median ms of one target forward over T new tokens (chain mask) on top of the cached `sequence`.
    The sizes are timed in interleaved rounds (1..64, then 64..1, ...), so a passing load on the machine
    spreads over every size instead of inflating the few timed while it lasted."""
    target, device = generator.target, generator.target.device
    ids = torch.tensor([sequence], device=device)
    cache, n = new_cache(), ids.shape[1]
    target(ids, cache=cache)
    times: dict[int, list[float]] = {T: [] for T in counts}
    for r in range(repeats or FORWARD_REPEATS):
        for T in (counts if r % 2 == 0 else tuple(reversed(counts))):
            times[T].append(forward_seconds(generator, cache, ids[:, -1:], n, T))
    return {T: 1e3 * statistics.median(ts) for T, ts in times.items()}


def forward_seconds(generator: SpeculativeGenerator, cache, last: torch.Tensor, n: int, T: int) -> float:
    """One timed target forward of T tokens after the n cached ones; the cache is cut back to n after it."""
    device = last.device
    mask = torch.cat([torch.ones(T, n, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], 1).to(device)
    tokens, positions = last.expand(1, T).contiguous(), torch.arange(n, n + T, device=device)[None]
    sync(device)  # the previous round's cache cut is not timed with this forward
    start = time.perf_counter()  # only the forward is timed, as before the rounds were interleaved
    generator.target(tokens, position_ids=positions, attention_mask=mask[None, None], cache=cache,
                     aux_layer_ids=generator.aux_layer_ids)
    sync(device)
    seconds = time.perf_counter() - start
    truncate(cache, n)
    return seconds


def interpolate(table: dict[int, float], T: int) -> float:
    keys = sorted(table)
    if T in table:
        return table[T]
    lo = max([k for k in keys if k < T], default=keys[0])
    hi = min([k for k in keys if k > T], default=keys[-1])
    if hi == lo:
        return table[lo] * T / lo
    return table[lo] + (table[hi] - table[lo]) * (T - lo) / (hi - lo)


def step_rest_ms(generator: SpeculativeGenerator, prompt, tree: TreeConfig, propose_ms: float,
                 forward_ms: dict[int, float], size: int, new_tokens: int) -> float:
    """Per-step time that is neither propose nor the target forward, from one real speculative run."""
    gen = generator.with_tree(tree)
    start = time.perf_counter()
    out = gen.generate(prompt, new_tokens)
    wall = time.perf_counter() - start
    steps = max(1, out.stats.target_forwards - 1)
    prefill_ms = forward_ms[max(FORWARD_TOKEN_COUNTS)]  # an upper bound of the prompt's forward, small beside the steps
    return max(0.0, (1e3 * wall - prefill_ms) / steps - propose_ms - interpolate(forward_ms, size))
