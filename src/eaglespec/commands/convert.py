"""`eaglespec convert llama2c SRC.bin --tokenizer tok.model --output DIR` / `eaglespec convert gguf FILE.gguf --output DIR`."""

from __future__ import annotations

import argparse

FORMATS = ("llama2c", "gguf")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="source checkpoint format")
    p.add_argument("source", help="checkpoint file (llama2.c legacy .bin, or a .gguf file transformers can read)")
    p.add_argument("--tokenizer", help="llama2c: SentencePiece tokenizer model (e.g. tok512.model)")
    p.add_argument("--output", required=True, help="output Hugging Face model directory")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default="bfloat16",
                   help="gguf: dtype of the de-quantized weights (default bfloat16)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        from eaglespec.models.gguf import convert_gguf

        out = convert_gguf(args.source, args.output, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {out} (plain Hugging Face model: config, {args.dtype} safetensors, tokenizer, generation_config)")
        return 0
    from eaglespec.models.llama2c import convert_llama2c

    if not args.tokenizer:
        raise ValueError("convert llama2c needs --tokenizer tok.model")
    out = convert_llama2c(args.source, args.tokenizer, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (LlamaForCausalLM + tokenizer)")
    return 0
