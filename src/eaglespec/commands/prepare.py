"""`eaglespec prepare --data-format chat|fim|text --input FILE... --tokenizer PATH --output DIR`."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-format", required=True, choices=("chat", "fim", "text"))
    p.add_argument("--input", required=True, nargs="+", help="JSON / JSON Lines files (.gz too), or anything "
                   "datasets.load_dataset reads locally (parquet, csv, a dataset folder)")
    p.add_argument("--tokenizer", required=True, help="tokenizer or model directory ('stories260K': bundled)")
    p.add_argument("--output", required=True, help="output directory (datasets.load_from_disk reads it)")
    p.add_argument("--max-len", type=int, default=2048, help="truncate longer samples (counted in stats.json)")
    p.add_argument("--system-prompt", default=None, help="chat: system message for conversations without one")
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--num-proc", type=int, default=1, help="tokenizer worker processes")
    p.add_argument("--chat-template", default=None, help="chat: Jinja chat template file replacing the tokenizer's")
    p.add_argument("--fim-order", default=None, choices=("psm", "spm"),
                   help="fim: layout (default: the FIM family's own; PSM except Mistral's suffix-first)")
    p.add_argument("--fim-tokens", default=None, metavar="P,S,M[,T]",
                   help="fim: prefix, suffix, middle (and terminator) tokens overriding auto-detection")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from eaglespec.data.prepare import prepare_dataset

    stats = prepare_dataset(
        args.input, args.tokenizer, args.output, data_format=args.data_format, max_len=args.max_len,
        system_prompt=args.system_prompt, skip_invalid=args.skip_invalid, num_proc=args.num_proc,
        chat_template=args.chat_template, fim_order=args.fim_order, fim_tokens=args.fim_tokens,
        overwrite=args.overwrite, progress=True,
    )
    print(json.dumps(asdict(stats), indent=2))
    print(f"wrote {stats.kept} samples to {args.output}")
    if stats.skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items(), key=lambda x: -x[1]))
        print(f"skipped {sum(stats.skipped.values())} invalid records: {reasons} (counted in stats.json)")
    return 0
