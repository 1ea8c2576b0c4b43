"""`eaglespec bench --base M --draft D --questions FILE...`: tau, acceptance by depth, wall-clock speedup."""

from __future__ import annotations

import argparse

from eaglespec.evaluation.benchmark import BenchOptions
from eaglespec.evaluation.methods import DEFAULT_METHODS

DEFAULTS = BenchOptions(base="", questions=[])


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or stories260K / smollm2-135m)")
    p.add_argument("--draft", default=None, help="draft directory (needed by the eagle methods)")
    p.add_argument("--questions", nargs="+", required=True,
                   help="MT-bench / Spec-Bench question.jsonl, HumanEval(.gz), HumanEval-infilling, or plain text lines")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma list of vanilla, eagle, eagle-nolookup, eagle-chain, eagle-default, lookup, hf, pld, assisted=PATH")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="interleaved rounds (median reported)")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    p.add_argument("--tree", choices=("dynamic", "static", "chain", "auto"), default=None,
                   help="eagle's tree; auto = tune on this hardware first (default: the draft's tuned tree, else dynamic)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="--tree auto tunes on the first turns of this question file (any --questions schema; never "
                        "one of the benchmark's files) instead of the built-in prompts")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--draft-top-k", type=int, default=None)
    p.add_argument("--total-tokens", type=int, default=None)
    p.add_argument("--lookup", type=int, default=None, metavar="N", help="merge up to N tokens of n-gram lookup (the continuation of the text's latest earlier match) into each tree; 0 = off (default: the draft's tuned tree's; eagle-nolookup is eagle's tree without it)")
    p.add_argument("--chain-depth", type=int, default=DEFAULTS.chain_depth, help="depth of eagle-chain")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N questions of each file")
    p.add_argument("--every", type=int, default=DEFAULTS.every, help="every n-th question of each file")
    p.add_argument("--first-turn-only", action="store_true", help="multi-turn questions: first turn only")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--output", default=DEFAULTS.output, help="directory for results.json, report.md and plots")
    p.add_argument("--batch-size", type=int, default=None,
                   help="throughput mode: batched vanilla / eagle / hf generate and eagle at batch size 1 on the "
                        "first turns (total new tokens / wall time, per-sequence latency)")


def run(args: argparse.Namespace) -> int:
    from eaglespec.evaluation.benchmark import run_benchmark

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    opts = BenchOptions(base=args.base, draft=args.draft, questions=args.questions, methods=methods,
                        max_new_tokens=args.max_new_tokens, repeats=args.repeats, temperature=args.temperature,
                        top_p=args.top_p, tree=args.tree, depth=args.depth, draft_top_k=args.draft_top_k,
                        total_tokens=args.total_tokens, lookup=args.lookup, chain_depth=args.chain_depth, dtype=args.dtype,
                        device=args.device, limit=args.limit, every=args.every, first_turn_only=args.first_turn_only,
                        seed=args.seed, output=args.output, batch_size=args.batch_size,
                        calibration=args.calibration)
    return run_benchmark(opts)
