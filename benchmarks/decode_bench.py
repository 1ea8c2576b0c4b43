"""Speculative vs vanilla decoding, measured side by side in one run.

For each repeat, every prompt is decoded by both methods, in an order that alternates between repeats
(vanilla first on even repeats, speculative first on odd ones), so slow phases of a noisy machine hit both.
Per repeat: tokens/s of each method over all prompts and their ratio; the report gives the median ratio of
the repeats, with min and max. Greedy outputs of the two methods are compared token for token.

    python benchmarks/decode_bench.py --base stories260K --draft DRAFT_DIR --prompts prompts.jsonl \
        --max-new-tokens 128 --repeats 5 --output bench.json

Writes one JSON record (device, commit, config, figures). Never used as a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from eaglespec.decoding import SpeculativeGenerator

DEFAULT_PROMPTS = [
    "Once upon a time", "One day, a little boy named Tim", "The sun was shining and", "Lily and her mom went to",
    "There was a big dog who", "Sam had a red ball. He", "In a small house lived", "The cat saw a bird and",
]


def read_prompts(path: str | None, limit: int) -> list[str]:
    if path is None:
        return DEFAULT_PROMPTS[:limit]
    prompts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line) if line.lstrip().startswith("{") else {"prompt": line}
        prompts.append(record.get("prompt") or record.get("text") or record["turns"][0])
    return prompts[:limit]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed(fn, sync) -> tuple[object, float]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tree = {k: v for k, v in (("kind", args.tree), ("depth", args.depth), ("top_k", args.draft_top_k),
                              ("total_tokens", args.total_tokens)) if v is not None}
    gen = SpeculativeGenerator.from_pretrained(args.base, args.draft, dtype=args.dtype, device=args.device, **tree)
    device = gen.target.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    prompts = read_prompts(args.prompts, args.num_prompts)
    for p in prompts[:2]:  # warm-up (allocator, kernels, tree buffers)
        gen.generate(p, args.max_new_tokens)
        gen.vanilla_generate(p, args.max_new_tokens)

    repeats, taus, mismatches = [], [], 0
    for r in range(args.repeats):
        totals = {"vanilla": [0, 0.0], "speculative": [0, 0.0]}
        for p in prompts:
            order = ("vanilla", "speculative") if r % 2 == 0 else ("speculative", "vanilla")
            outs = {}
            for method in order:
                fn = (lambda: gen.vanilla_generate(p, args.max_new_tokens)) if method == "vanilla" else \
                     (lambda: gen.generate(p, args.max_new_tokens))
                outs[method], seconds = timed(fn, sync)
                totals[method][0] += outs[method].stats.new_tokens
                totals[method][1] += seconds
            mismatches += outs["vanilla"].token_ids != outs["speculative"].token_ids
            taus.append(outs["speculative"].stats.tau)
        tps = {m: n / s for m, (n, s) in totals.items()}
        repeats.append({"vanilla_tok_s": tps["vanilla"], "speculative_tok_s": tps["speculative"],
                        "speedup": tps["speculative"] / tps["vanilla"]})
        print(f"repeat {r + 1}/{args.repeats}: vanilla {tps['vanilla']:.1f} tok/s, speculative "
              f"{tps['speculative']:.1f} tok/s, speedup {repeats[-1]['speedup']:.2f}x", file=sys.stderr)

    speedups = [x["speedup"] for x in repeats]
    return {
        "device": device_name(device), "torch": torch.__version__, "commit": commit(),
        "config": {**vars(args), "tree": tree},
        "prompts": len(prompts),
        "tau_mean": statistics.fmean(taus),
        "vanilla_tok_s_median": statistics.median(x["vanilla_tok_s"] for x in repeats),
        "speculative_tok_s_median": statistics.median(x["speculative_tok_s"] for x in repeats),
        "speedup_median": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
        "greedy_mismatches": mismatches,
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="stories260K")
    p.add_argument("--draft", required=True)
    p.add_argument("--prompts", default=None, help="JSONL ({prompt}|{text}|{turns}) or text lines")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tree", choices=("dynamic", "static", "chain"), default="dynamic")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--draft-top-k", type=int, default=None)
    p.add_argument("--total-tokens", type=int, default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--output", default=None, help="write the JSON record here (default: stdout)")
    args = p.parse_args()
    record = run(args)
    text = json.dumps(record, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
