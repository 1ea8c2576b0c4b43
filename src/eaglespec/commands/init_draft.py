"""`eaglespec init-draft --base MODEL --method eagle1|eagle3 --output DIR`: an untrained draft head."""

from __future__ import annotations

import argparse


def parse_layer_ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,16,29, got {text!r}") from e


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or 'stories260K' for the bundled one)")
    p.add_argument("--method", required=True, choices=("eagle1", "eagle3"))
    p.add_argument("--output", required=True, help="output draft directory")
    p.add_argument("--draft-vocab-size", type=int, default=None, help="EAGLE-3 draft vocabulary size (default: full)")
    p.add_argument("--aux-layers", type=parse_layer_ids, default=None,
                   help="EAGLE-3 aux layer ids a,b,c (Hugging Face hidden_states index; default 2,L//2,L-3)")
    p.add_argument("--fc-bias", action="store_true", help="EAGLE-1 fc with bias (the reference's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eaglespec.models import resolve_model_path
    from eaglespec._io import atomic_directory
    from eaglespec.models import TargetModel, build_draft

    out = Path(args.output)
    target = TargetModel.from_pretrained(resolve_model_path(args.base))
    draft = build_draft(target, args.method, draft_vocab_size=args.draft_vocab_size,
                        aux_layer_ids=args.aux_layers, fc_bias=args.fc_bias, seed=args.seed)
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        draft.save_pretrained(tmp)
    n_train = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    print(f"wrote untrained {args.method} draft to {out} ({n_train:,} trainable parameters"
          + (f", aux layers {draft.config.aux_layer_ids}" if args.method == "eagle3" else "") + ")")
    return 0
