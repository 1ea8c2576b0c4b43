"""`eaglespec bench --batch-size B`: throughput of batched decoding (total new tokens / wall time) and latency.

Runs, interleaved over `repeats` rounds (order reversed every other round), on the same prompts:
- `eagle`: batched tree speculative decoding (`decoding.batch`, continuous batching of B rows);
- `vanilla`: our batched vanilla decoding, same API;
- `hf`: transformers `generate` over left-padded batches of B prompts (lockstep: a batch ends with its
  longest answer);
- `eagle-bs1`: speculative decoding one sequence at a time (B = 1), the latency-optimal baseline.
Per method: median tokens/s over rounds; per-sequence latency (median and 90th percentile) of round 0.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from eaglespec.decoding import SpeculativeGenerator, sync

BATCH_METHODS = ("vanilla", "eagle", "hf", "eagle-bs1")


@dataclass
class ThroughputRun:
    method: str
    round: int
    new_tokens: int
    seconds: float
    latencies: list[float]  # per sequence, from the start of the run

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def _ours(gen: SpeculativeGenerator, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
          vanilla: bool) -> tuple[int, list[float]]:
    result = gen.generate_batch(prompts, max_new_tokens, vanilla=vanilla, max_batch_size=batch_size)
    errors = [o.error for o in result.outputs if o.error]
    if errors:
        raise ValueError(f"batched decoding failed for {len(errors)} prompts: {errors[0]}")
    return result.new_tokens, [t.latency for t in result.timings]


@torch.no_grad()
def _hf(gen: SpeculativeGenerator, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
        start: float) -> tuple[int, list[float]]:
    model, device = gen.target.model, gen.target.device
    eos = sorted(gen.eos_token_ids())
    total, latencies = 0, []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        longest = max(len(p) for p in chunk)
        ids = torch.tensor([[eos[0]] * (longest - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=eos[0])
        for row in out[:, longest:].tolist():
            stop = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            total += stop
        latencies += [time.perf_counter() - start] * len(chunk)  # a lockstep batch finishes together
    return total, latencies


def run_method(gen: SpeculativeGenerator, method: str, prompts: list[list[int]], max_new_tokens: int,
               batch_size: int, round_: int) -> ThroughputRun:
    sync(gen.target.device)
    start = time.perf_counter()
    if method == "hf":
        tokens, latencies = _hf(gen, prompts, max_new_tokens, batch_size, start)
    elif method == "eagle-bs1":
        tokens, latencies = _ours(gen, prompts, max_new_tokens, 1, vanilla=False)
    else:
        tokens, latencies = _ours(gen, prompts, max_new_tokens, batch_size, vanilla=method == "vanilla")
    sync(gen.target.device)
    return ThroughputRun(method, round_, tokens, time.perf_counter() - start, latencies)


def throughput_benchmark(gen: SpeculativeGenerator, prompts: list[list[int]], max_new_tokens: int,
                         batch_size: int, methods=BATCH_METHODS, repeats: int = 2, progress=None) -> dict:
    unknown = [m for m in methods if m not in BATCH_METHODS]
    if unknown:
        raise ValueError(f"--batch-size mode runs {', '.join(BATCH_METHODS)}; not {unknown}")
    for m in methods:  # warm-up on two prompts
        run_method(gen, m, prompts[:2], 16, batch_size, -1)
    runs = []
    for r in range(repeats):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            runs.append(run_method(gen, m, prompts, max_new_tokens, batch_size, r))
            if progress is not None:
                progress()
    return summarise_throughput(runs, methods, batch_size)


def summarise_throughput(runs: list[ThroughputRun], methods, batch_size: int) -> dict:
    out = {}
    for m in methods:
        mine = [r for r in runs if r.method == m]
        lat = sorted(mine[0].latencies)
        out[m] = {"tokens_per_s": statistics.median(r.tokens_per_s for r in mine),
                  "tokens_per_s_rounds": [r.tokens_per_s for r in mine], "new_tokens": mine[0].new_tokens,
                  "latency_median_s": statistics.median(lat), "latency_p90_s": lat[int(0.9 * (len(lat) - 1))]}
    for base in ("vanilla", "hf", "eagle-bs1"):
        if base in out:
            for m in out:
                out[m][f"speedup_vs_{base}"] = out[m]["tokens_per_s"] / out[base]["tokens_per_s"]
    return {"batch_size": batch_size, "methods": out, "runs": [asdict(r) for r in runs]}
