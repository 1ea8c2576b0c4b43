"""`eaglespec tune --base M --draft D`: measure this hardware and write the best tree into the draft's config."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or stories260K / smollm2-135m)")
    p.add_argument("--draft", required=True, help="draft directory; its config.json gets the chosen tree")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="tune on the first turns of this question file (MT-bench / Spec-Bench jsonl, HumanEval, plain "
                        "text lines; e.g. held-out prompts of your traffic) instead of the built-in prompts")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length to tune for: acceptance and step cost change along an answer (default: "
                        "eaglespec.evaluation.tune.CALIBRATION_NEW_TOKENS; bench --tree auto uses its own)")
    p.add_argument("--prompt-tokens", type=int, default=None, metavar="N",
                   help="your traffic's mean prompt length: shorter calibration prompts are preceded by the other "
                        "calibration prompts' tokens up to N, so the speeds are timed at that context (bench "
                        "--tree auto passes its questions' mean)")
    p.add_argument("--dry-run", action="store_true", help="print the choice, do not write it")


def run(args: argparse.Namespace) -> int:
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.evaluation.tune import calibration_prompts, tune_tree, write_tuned_tree

    gen = SpeculativeGenerator.from_pretrained(args.base, args.draft, dtype=args.dtype, device=args.device)
    result = tune_tree(gen, calibration_prompts(gen, args.calibration), new_tokens=args.max_new_tokens,
                       prompt_tokens=args.prompt_tokens)
    for c in (c for c in result.candidates if c.measured_tokens_per_s is not None):
        print(f"  {c.tree}: measured {c.measured_tokens_per_s:.1f} tokens/s (tau {c.measured_tau:.2f}); cost model "
              f"{c.predicted_tokens_per_s:.1f} (tau {c.predicted_tau:.2f}, propose {c.propose_ms:.1f} ms, forward of "
              f"{c.size} tokens {c.forward_ms:.1f} ms)")
    print(f"chosen: {result.choice}: {result.predicted_tokens_per_s:.1f} tokens/s on the calibration prompts "
          f"({result.new_tokens} new tokens), vanilla {result.vanilla_predicted_tokens_per_s:.1f} "
          f"({result.predicted_speedup:.2f}x)")
    if result.vanilla_note():
        print(result.vanilla_note())
    if not args.dry_run:
        path = write_tuned_tree(args.draft, result, gen)
        print(f"wrote the tree into {path}; generate / serve / bench use it unless a tree flag is given")
    return 0
