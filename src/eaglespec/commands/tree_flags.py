"""The draft-tree flags of every command that decodes (generate, serve, bench), declared once.

Every flag defaults to None, "not given": the draft's tuned tree (`eaglespec tune` stores it in the draft
config's `decoding.tree`) is used unless a flag overrides it (`TreeConfig.merged`); without a tuned tree, the
`TreeConfig` defaults apply.
"""

from __future__ import annotations

import argparse

from eaglespec.decoding.tree import DEFAULT_DEPTH, DEFAULT_TOP_K, DEFAULT_TOTAL_TOKENS, TREE_KINDS

TREE_FLAG_FIELDS = {"tree": "kind", "depth": "depth", "draft_top_k": "top_k", "total_tokens": "total_tokens",
                    "lookup": "lookup"}  # argparse dest -> TreeConfig field
AUTO_TREE = "auto"  # bench only: tune on this hardware first


def add_tree_flags(p: argparse.ArgumentParser, allow_auto: bool = False) -> None:
    """--tree, --depth, --draft-top-k, --total-tokens, --lookup; allow_auto adds `--tree auto` (bench)."""
    kinds = TREE_KINDS + ((AUTO_TREE,) if allow_auto else ())
    auto = "; auto = tune on this hardware first" if allow_auto else ""
    p.add_argument("--tree", choices=kinds, default=None,
                   help=f"draft tree{auto} (default: the draft's tuned tree from `eaglespec tune`, else dynamic)")
    depths = ", ".join(f"{depth} for {method}" for method, depth in DEFAULT_DEPTH.items())
    p.add_argument("--depth", type=int, default=None, help=f"tree depth (default: {depths})")
    p.add_argument("--draft-top-k", type=int, default=None, help=f"dynamic tree branching (default {DEFAULT_TOP_K})")
    p.add_argument("--total-tokens", type=int, default=None,
                   help=f"dynamic tree size incl. root (default {DEFAULT_TOTAL_TOKENS})")
    p.add_argument("--lookup", type=int, default=None, metavar="N",
                   help="merge up to N tokens of n-gram lookup (the continuation of the text's latest earlier match) "
                        "into each tree; 0 = off (default: the draft's tuned tree's)")


def tree_overrides(args: argparse.Namespace) -> dict:
    """The tree flags given on the command line, as TreeConfig fields (the tuned tree's other fields stay)."""
    given = {field: getattr(args, dest) for dest, field in TREE_FLAG_FIELDS.items()}
    return {field: value for field, value in given.items() if value is not None}
