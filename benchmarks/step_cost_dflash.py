"""DFlash's step cost against block size and EAGLE-3's chain, in ONE process with interleaved rounds (so the
machine's drift between processes does not enter the ratios): per step, ms of the draft, of verification and
in all, relative to a vanilla forward timed in the same rounds. Random weights (a forward's time does not depend
on the values), so this is the cost side only; acceptance comes from real drafts.

    python benchmarks/step_cost_dflash.py --config ~/.cache/eaglespec/models/smollm2-135m/config.json \
        --eagle-draft src/eaglespec/assets/drafts/smollm2-135m-eagle3 --output cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import build_target, ms_per_forward  # noqa: E402

from eaglespec.decoding import SpeculativeGenerator, TreeConfig  # noqa: E402
from eaglespec.models import DFlashShape, EagleDraftModel, build_draft  # noqa: E402


def generators(args, target) -> dict[str, SpeculativeGenerator]:
    gens = {"vanilla": SpeculativeGenerator(target, None)}
    for block in args.blocks:
        draft = build_draft(target, "dflash", dflash=DFlashShape(num_layers=args.dflash_layers, block_size=block),
                            dtype=target.dtype, seed=0).to(target.device)
        gens[f"dflash-{block}"] = SpeculativeGenerator(target, draft, tree=TreeConfig(kind="chain", depth=block - 1))
    if args.eagle_draft:
        draft = EagleDraftModel.from_pretrained(args.eagle_draft, target=target, dtype=target.dtype,
                                                device=target.device)
        gens["eagle3-chain3"] = SpeculativeGenerator(target, draft, tree=TreeConfig(kind="chain", depth=3))
    return gens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the target's config.json")
    p.add_argument("--eagle-draft", help="an EAGLE-3 draft of that target, timed as a chain of 3")
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--dflash-layers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--context", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output")
    args = p.parse_args(argv)
    args.preset = None
    target, _ = build_target(args)
    gens = generators(args, target)
    g = torch.Generator().manual_seed(0)
    context = torch.randint(3, target.vocab_size, (1, args.context), generator=g).to(target.device)
    runs: dict[str, list[dict]] = {name: [] for name in gens}
    for r in range(args.rounds):
        for name in (list(gens) if r % 2 == 0 else list(reversed(gens))):
            runs[name].append(ms_per_forward(gens[name], context, args.new_tokens, vanilla=name == "vanilla"))
    vanilla = statistics.median(m["ms_per_forward"] for m in runs["vanilla"])
    result = {"config": args.config, "dtype": args.dtype, "context": args.context, "rounds": args.rounds,
              "vanilla_ms": vanilla, "methods": {}}
    for name, ms in runs.items():
        step = statistics.median(m["ms_per_forward"] for m in ms)
        split = {k: statistics.median(m["split_ms"][k] for m in ms) for k in ("draft", "verify", "other")}
        result["methods"][name] = {"ms_per_step": step, "vs_vanilla": step / vanilla, "split_ms": split}
        print(f"{name}: {step:.1f} ms per step ({step / vanilla:.2f}x a vanilla forward; draft {split['draft']:.1f}, "
              f"verify {split['verify']:.1f}, other {split['other']:.1f})")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
