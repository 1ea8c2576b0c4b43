"""`eaglespec demo`: self-distil, train an EAGLE-3 head on the bundled stories260K, show the result."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.demo import DemoConfig, default_cache_dir

    d = DemoConfig.__dataclass_fields__
    p.add_argument("--cache-dir", default=None, help=f"data and draft cache (default {default_cache_dir()})")
    p.add_argument("--train-minutes", type=float, default=d["train_minutes"].default)
    p.add_argument("--num-stories", type=int, default=d["num_stories"].default,
                   help="self-distilled stories to sample (cached per count)")
    p.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"].default)
    p.add_argument("--prompt", action="append", default=None, help="a prompt to show (repeatable)")
    p.add_argument("--no-color", action="store_true", help="mark draft tokens with [brackets] instead of colour")
    p.add_argument("--target", default=None,
                   help="a fetched chat model with a committed draft (smollm2-135m) instead of training on stories260K")
    p.add_argument("--draft", default=None, help="with --target: the draft (default: the committed one for it)")


def run(args: argparse.Namespace) -> int:
    from eaglespec.demo import DemoConfig, main_colour, run_chat_demo, run_demo

    if args.target:
        from eaglespec.models.paths import committed_draft_path

        draft = args.draft or committed_draft_path(args.target)
        kw = {"prompts": tuple(args.prompt)} if args.prompt else {}
        report = run_chat_demo(args.target, draft, args.max_new_tokens, colour=main_colour() and not args.no_color, **kw)
        return 0

    kwargs = dict(train_minutes=args.train_minutes, num_stories=args.num_stories,
                  max_new_tokens=args.max_new_tokens, colour=main_colour() and not args.no_color)
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    if args.prompt:
        kwargs["prompts"] = tuple(args.prompt)
    report = run_demo(DemoConfig(**kwargs))
    return 0 if report.comparison.all_identical else 1
