"""`eaglespec show-sample --data DIR [--tokenizer PATH] [--index I]`: one sample, trained tokens highlighted."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a directory written by `eaglespec prepare`")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one it was prepared with)")
    p.add_argument("--index", type=int, default=0, help="row number")
    p.add_argument("--plain", action="store_true",
                   help="mark trained spans with [[ ]] instead of colours (the default when not a terminal)")


def run(args: argparse.Namespace) -> int:
    import sys

    from eaglespec.data.prepare import load_prepared, load_tokenizer
    from eaglespec.data.visualize import format_sample, sample_summary

    dataset, meta = load_prepared(args.data)
    if not 0 <= args.index < len(dataset):
        raise ValueError(f"--index {args.index}: the dataset has rows 0..{len(dataset) - 1}")
    row = dataset[args.index]
    tokenizer = load_tokenizer(args.tokenizer or meta.tokenizer)
    color = not args.plain and sys.stdout.isatty()
    print(f"sample {args.index} (id {row['id']}): {sample_summary(row['input_ids'], row['loss_mask'])}")
    print(format_sample(tokenizer, row["input_ids"], row["loss_mask"], color=color))
    return 0
