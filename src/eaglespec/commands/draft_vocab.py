"""`eaglespec draft-vocab --data DIR --vocab-size V --draft-vocab-size N`: EAGLE-3 draft vocabulary coverage."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eaglespec" / "draft_vocab"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a directory written by `eaglespec prepare`")
    p.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size V")
    p.add_argument("--draft-vocab-size", type=int, required=True, help="draft vocabulary size Vd")
    p.add_argument("--cache-dir", default=None, help=f"cache directory (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def run(args: argparse.Namespace) -> int:
    from eaglespec.data.vocab import build_draft_vocab

    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    vocab = build_draft_vocab(args.data, args.vocab_size, args.draft_vocab_size, cache_dir=cache)
    seen = int((vocab.counts > 0).sum())
    print(f"draft vocabulary: {vocab.draft_vocab_size} of {vocab.vocab_size} target tokens "
          f"({seen} distinct tokens are trained in the data)")
    print(f"coverage: {vocab.coverage:.4f} of {int(vocab.counts.sum())} trained tokens")
    return 0
