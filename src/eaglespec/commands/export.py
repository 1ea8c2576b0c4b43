"""`eaglespec export --draft DIR --format sglang|vllm|speculators|eagle --output DIR [--target PATH]`, and
`eaglespec export --format gguf --draft DIR --target PATH --output DRAFT.gguf [--dtype bf16|f16|f32]`."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.export.configs import SPECULATIVE_TOKENS
    from eaglespec.export.layout import FORMATS
    from eaglespec.export.llamacpp import GGUF_DTYPE_ALIASES, GGUF_FORMAT

    p.add_argument("--draft", required=True, help="an eaglespec draft directory (e.g. ckpt/state_40)")
    p.add_argument("--format", required=True, choices=(*FORMATS, GGUF_FORMAT), dest="fmt",
                   help="gguf: llama.cpp's eagle3 GGUF (EAGLE-3 drafts) or dflash GGUF (DFlash drafts); needs --target "
                   "for its tokenizer")
    p.add_argument("--output", required=True, help="output directory (gguf: the output .gguf file)")
    p.add_argument("--target", default=None,
                   help="the target model directory: checked against the draft; its context length is written; "
                        "speculators' verifier path (default: the path the draft records)")
    p.add_argument("--dtype", choices=(*GGUF_DTYPE_ALIASES, *GGUF_DTYPE_ALIASES.values()), default=None,
                   help="cast the weights (default: keep the draft's dtype)")
    p.add_argument("--speculative-tokens", type=int, default=SPECULATIVE_TOKENS,
                   help="speculators, EAGLE-3: draft tokens per step vLLM runs (a DFlash draft: its block, "
                        "block_size - 1)")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from eaglespec.export import export_draft
    from eaglespec.export.llamacpp import GGUF_DTYPE_ALIASES, GGUF_FORMAT, export_gguf

    if args.fmt == GGUF_FORMAT:
        if args.target is None:
            raise ValueError("--format gguf needs --target (the target model directory): the GGUF carries its "
                             "tokenizer and is checked against it")
        print(export_gguf(args.draft, args.output, args.target, dtype=args.dtype, overwrite=args.overwrite).render())
        return 0
    dtype = {short: long for long, short in GGUF_DTYPE_ALIASES.items()}.get(args.dtype, args.dtype)
    report = export_draft(args.draft, args.fmt, args.output, target=args.target, dtype=dtype,
                          speculative_tokens=args.speculative_tokens, overwrite=args.overwrite)
    print(report.render())
    return 0
