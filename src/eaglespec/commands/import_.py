"""`eaglespec import --format eagle|speculators --input DIR --target PATH --output DIR`."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.export.layout import IMPORT_FORMATS

    p.add_argument("--format", required=True, choices=IMPORT_FORMATS, dest="fmt",
                   help="eagle: the reference EAGLE-1/EAGLE-3 (published, state_N/ of its trainers); speculators")
    p.add_argument("--input", required=True, help="the checkpoint directory")
    p.add_argument("--target", required=True, help="the target model directory the draft was trained for")
    p.add_argument("--output", required=True, help="output eaglespec draft directory")
    p.add_argument("--config", default=None,
                   help="the checkpoint's config.json when it is not in --input (a trainer's state_N/ has none)")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from eaglespec.export import import_draft

    report = import_draft(args.fmt, args.input, args.target, args.output, config_path=args.config,
                          overwrite=args.overwrite)
    print(report.render())
    return 0
