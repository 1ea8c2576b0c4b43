"""`eaglespec convert llama2c SRC.bin --tokenizer tok.model --output DIR`."""

from __future__ import annotations

import argparse

FORMATS = ("llama2c",)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="source checkpoint format")
    p.add_argument("source", help="checkpoint file (llama2.c legacy .bin)")
    p.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer model (e.g. tok512.model)")
    p.add_argument("--output", required=True, help="output Hugging Face model directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    from eaglespec.models.llama2c import convert_llama2c

    out = convert_llama2c(args.source, args.tokenizer, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (LlamaForCausalLM + tokenizer)")
    return 0
