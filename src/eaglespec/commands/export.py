"""`eaglespec export --draft DIR --format sglang|vllm|speculators|eagle --output DIR [--target PATH]`."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.export.configs import SPECULATIVE_TOKENS
    from eaglespec.export.layout import FORMATS

    p.add_argument("--draft", required=True, help="an eaglespec draft directory (e.g. ckpt/state_40)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--target", default=None,
                   help="the target model directory: checked against the draft; its context length is written; "
                        "speculators' verifier path (default: the path the draft records)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast the weights (default: keep the draft's dtype)")
    p.add_argument("--speculative-tokens", type=int, default=SPECULATIVE_TOKENS,
                   help="speculators: draft tokens per step vLLM runs")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from eaglespec.export import export_draft

    report = export_draft(args.draft, args.fmt, args.output, target=args.target, dtype=args.dtype,
                          speculative_tokens=args.speculative_tokens, overwrite=args.overwrite)
    print(report.render())
    return 0
