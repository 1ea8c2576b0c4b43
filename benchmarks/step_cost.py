"""What one decoding step costs on this hardware for a model of a given shape, with no weights to download.

A forward's time does not depend on the weights' values, so a target built from a `config.json` with random
weights times like the real one. This measures, on the device and dtype given:
- the target's forward over T tokens on top of a cached context (T = 1 ... 64: the verification cost of a tree
  of T tokens; `eaglespec tune`'s cost table), and
- the wall time per target forward (the prefill left out) of vanilla decoding and of speculative decoding with
  a draft (`--draft`: a real draft directory for that target shape, e.g. the committed SmolLM2 one; otherwise a
  random EAGLE-3 head of the target's shape; `--dflash-block B`: a random DFlash draft drafting blocks of B, with
  `--dflash-layers` layers) and a tree (DFlash: a chain of `--depth`, default B - 1), over `--new-tokens` tokens.
  With random target weights
  the acceptance is not the real one (n-gram lookup may match the random output's repetitions), so that is the
  cost of one speculative step at this tree size, not a speed-up.

With `--tau X` (an acceptance length measured with the real models, e.g. by `eaglespec bench` elsewhere) it
also prints the speed-up that step cost implies: X * vanilla ms / speculative ms. That is a projection, and the
output says so.

    python benchmarks/step_cost.py --config ~/.cache/eaglespec/models/smollm2-135m/config.json \
        --draft src/eaglespec/assets/drafts/smollm2-135m-eagle3 --device cuda --dtype bfloat16 --tau 2.65
    python benchmarks/step_cost.py --preset llama-3-8b --device cuda --dtype bfloat16 --output cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.evaluation.tune_cost import time_forwards
from eaglespec.models import DFlashShape, EagleDraftModel, TargetModel, build_draft

PRESETS = {  # public architecture shapes (no weights): Llama-3-8B and its EAGLE-3 draft vocabulary
    "llama-3-8b": (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), 32000),
}


def build_target(args) -> tuple[TargetModel, int | None]:
    if args.preset:
        fields, draft_vocab = PRESETS[args.preset]
        config = LlamaConfig(**fields)
    else:
        config, draft_vocab = AutoConfig.from_pretrained(args.config), None
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    return TargetModel(model.eval()), draft_vocab


def build_generator(args, target: TargetModel, draft_vocab: int | None) -> SpeculativeGenerator:
    if args.draft:
        draft = EagleDraftModel.from_pretrained(args.draft, target=target, dtype=target.dtype, device=target.device)
    elif args.dflash_block:
        shape = DFlashShape(num_layers=args.dflash_layers, block_size=args.dflash_block)
        draft = build_draft(target, "dflash", dflash=shape, dtype=target.dtype, seed=0).to(target.device)
        return SpeculativeGenerator(target, draft, tree=TreeConfig(kind="chain", depth=args.depth or args.dflash_block - 1))
    else:
        used = torch.arange(draft_vocab) if draft_vocab else None
        draft = build_draft(target, "eagle3", draft_vocab_size=draft_vocab, used_tokens=used, dtype=target.dtype,
                            seed=0).to(target.device)
    tuned = (draft.config.decoding or {}).get("tree") or {}
    explicit = {k: v for k, v in dict(kind=args.tree, depth=args.depth, top_k=args.draft_top_k,
                                      total_tokens=args.total_tokens).items() if v is not None}
    return SpeculativeGenerator(target, draft, tree=TreeConfig.merged(tuned, explicit))


def _wall(stats) -> float:
    return stats.draft_time + stats.verify_time + stats.other_time


def ms_per_forward(gen: SpeculativeGenerator, prompt: torch.Tensor, new_tokens: int, vanilla: bool) -> dict:
    """ms per decoding step (target forward) without the prefill: a run of `new_tokens` minus a run of 1 (the
    prefill alone), the median of 3 such pairs; the draft / verify / other split likewise."""
    run = gen.vanilla_generate if vanilla else gen.generate
    run(prompt, 8, eos_token_id=-1)  # warm-up; no EOS: random weights could emit one
    pairs = [(run(prompt, 1, eos_token_id=-1).stats, run(prompt, new_tokens, eos_token_id=-1).stats)
             for _ in range(3)]

    def per_step(seconds) -> float:
        return 1e3 * statistics.median((seconds(long) - seconds(short)) / (long.target_forwards - short.target_forwards)
                                       for short, long in pairs)

    last = pairs[-1][1]
    return {"ms_per_forward": per_step(_wall), "tau": last.tau, "target_forwards": last.target_forwards,
            "split_ms": {k: per_step(lambda st, k=k: getattr(st, f"{k}_time")) for k in ("draft", "verify", "other")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument("--config", help="a model's config.json (or its directory)")
    shape.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--draft", help="a draft directory for that target shape (default: a random EAGLE-3 head)")
    p.add_argument("--dflash-block", type=int, help="time a random DFlash draft drafting blocks of this size instead")
    p.add_argument("--dflash-layers", type=int, default=1, help="the DFlash draft's layers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--context", type=int, default=512, help="cached tokens before the timed forwards / decoding")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--tree", choices=["dynamic", "static", "chain"])
    p.add_argument("--depth", type=int)
    p.add_argument("--draft-top-k", type=int)
    p.add_argument("--total-tokens", type=int)
    p.add_argument("--tau", type=float, help="acceptance length measured with the real models: print a projection")
    p.add_argument("--output", help="write the figures as JSON here")
    args = p.parse_args(argv)
    target, draft_vocab = build_target(args)
    gen = build_generator(args, target, draft_vocab)
    g = torch.Generator().manual_seed(0)
    context = torch.randint(3, target.vocab_size, (1, args.context), generator=g).to(target.device)
    result = {"device": torch.cuda.get_device_name() if target.device.type == "cuda" else "cpu",
              "dtype": args.dtype, "shape": args.preset or args.config, "context": args.context,
              "tree": ({"kind": "block", "block_size": args.dflash_block, "layers": args.dflash_layers,
                        "depth": gen.drafter.depth} if args.dflash_block else gen.tree.summary(gen.draft.config.method))}
    for key, measure in (("forward_ms", lambda: time_forwards(gen, context[0].tolist())),
                         ("vanilla", lambda: ms_per_forward(gen, context, args.new_tokens, vanilla=True)),
                         ("speculative", lambda: ms_per_forward(gen, context, args.new_tokens, vanilla=False))):
        result[key] = measure()
        print(f"{key}: {json.dumps(result[key])}", file=sys.stderr, flush=True)  # each part as soon as it is known
    ratio = result["speculative"]["ms_per_forward"] / result["vanilla"]["ms_per_forward"]
    result["step_cost_vs_vanilla_forward"] = ratio
    if args.tau:
        result["projection"] = {"tau": args.tau, "speedup": args.tau / ratio}
        print(f"projection (not a measurement): tau {args.tau} at {ratio:.2f}x a vanilla forward per step "
              f"-> {args.tau / ratio:.2f}x", file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
