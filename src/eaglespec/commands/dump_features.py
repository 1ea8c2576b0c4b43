"""`eaglespec dump-features`: run the target once over a prepared dataset and store the hidden states a
draft method trains on (safetensors shards + manifest.json). Resumable: rerun the same command."""

from __future__ import annotations

import argparse

from eaglespec.commands.init_draft import parse_layer_ids


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="target model directory (or 'stories260K' for the bundled one)")
    p.add_argument("--data", required=True, help="prepared dataset directory (from `eaglespec prepare`)")
    p.add_argument("--method", required=True, choices=("eagle1", "eagle3"))
    p.add_argument("--output", required=True, help="output feature directory")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="storage dtype of the hidden states")
    p.add_argument("--target-dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="dtype the target runs in (auto: the checkpoint's own); bf16 is faster on CPUs with bf16 "
                        "instructions and matches a target decoded in bf16")
    p.add_argument("--aux-layers", type=parse_layer_ids, default=None,
                   help="EAGLE-3 aux layer ids a,b,c (Hugging Face hidden_states index; default 2,L//2,L-3)")
    p.add_argument("--aux-int8", action="store_true",
                   help="eagle3: store the aux layers as int8 with a scale per token and group of 64 channels "
                        "(about a third less disk; the last hidden state, which gives the training targets, keeps "
                        "--dtype)")
    p.add_argument("--batch-size", type=int, default=1, help="samples of similar length per target forward")
    p.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 1000)")
    p.add_argument("--max-len", type=int, default=None, help="truncate samples to this many tokens")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--force", action="store_true", help="skip the free-disk-space check")
    p.add_argument("--overwrite", action="store_true", help="delete an existing output and start over")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from eaglespec.models import resolve_model_path
    from eaglespec.distill import features as ft
    from eaglespec.models import TargetModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[args.target_dtype]
    target = TargetModel.from_pretrained(resolve_model_path(args.model), dtype=dtype, device=device)
    plan, dataset = ft.plan_feature_dump(
        target, args.data, args.method, args.output, aux_layer_ids=args.aux_layers, dtype=ft.DTYPES[args.dtype],
        shard_size=args.shard_size or ft.DEFAULT_SHARD_SIZE, max_len=args.max_len, overwrite=args.overwrite,
        aux_int8=args.aux_int8)
    if plan.manifest.complete:
        print(f"{args.output}: already complete ({plan.manifest.num_samples} samples); nothing to do")
        return 0
    done = sum(s.end - s.start for s in plan.manifest.shards)
    print(f"{args.method} features of {plan.manifest.num_samples} samples -> {args.output}: "
          f"{len(plan.todo)} shards to write, about {plan.estimated_bytes / 2**20:,.1f} MiB "
          f"({plan.free_bytes / 2**30:,.1f} GiB free)" + (f"; resuming after {done} samples" if done else ""))
    if not args.force:
        ft.check_disk_space(plan)
    with tqdm(total=plan.manifest.num_samples, initial=done, unit="sample", desc="dump-features") as bar:
        manifest = ft.run_feature_dump(plan, dataset, target, batch_size=args.batch_size, progress=bar.update)
    print(f"wrote {len(manifest.shards)} shards to {args.output} (manifest complete)")
    return 0
