"""`eaglespec train eagle1|eagle3|dflash ...`: train a draft (EAGLE flags as in the tutorial)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from eaglespec.commands.init_draft import parse_layer_ids
from eaglespec.training.config import CommonTrainConfig, DFlashTrainConfig, Eagle1TrainConfig, Eagle3TrainConfig
from eaglespec.training.losses import LABEL_OBJECTIVE


def _default(config_class, name: str):
    """A config field's default: each default is written once, in training.config."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


def _common_flags(p: argparse.ArgumentParser, lr: float, bs: int, epochs: int, grad_accum: int,
                  warmup: int | None) -> None:
    p.add_argument("--basepath", required=True, help="target model directory (or 'stories260K')")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--bs", type=int, default=bs, help=f"micro-batch size per process (default {bs})")
    p.add_argument("--num_epochs", "--num-epochs", dest="num_epochs", type=int, default=epochs)
    p.add_argument("--grad-accum", type=int, default=grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--max-len", type=int, default=2048, help="truncate samples to this many tokens")
    p.add_argument("--warmup-steps", type=int, default=warmup,
                   help="linear warmup steps, then linear decay to 0" + ("" if warmup is not None else
                                                                         " (default: 1.5%% of all steps)"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                   default=_default(CommonTrainConfig, "precision"),
                   help="autocast precision (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--grad-clip", type=float, default=_default(CommonTrainConfig, "grad_clip"),
                   help="gradient clipping threshold (0: off)")
    p.add_argument("--clip-mode", choices=("norm", "value"), default=_default(CommonTrainConfig, "clip_mode"),
                   help="clip the global gradient norm (default) or each value (the reference's choice)")
    p.add_argument("--test-split", type=float, default=_default(CommonTrainConfig, "test_split"),
                   help="held-out fraction (seeded) for test metrics")
    p.add_argument("--seed", type=int, default=_default(CommonTrainConfig, "seed"))
    p.add_argument("--resume", action="store_true", help="continue from the newest complete resumable checkpoint")
    p.add_argument("--init-from", type=Path, default=None, metavar="DRAFT_DIR",
                   help="start from this draft's weights with a fresh optimizer and lr schedule (train a finished "
                        "or published draft further; --resume instead continues an interrupted run)")
    p.add_argument("--report-to", choices=("none", "tensorboard", "wandb"),
                   default=_default(CommonTrainConfig, "report_to"))
    p.add_argument("--max-steps", type=int, default=None, help="stop (and save) after this many optimizer steps")
    p.add_argument("--time-budget-minutes", type=float, default=None,
                   help="stop cleanly (evaluate and save a resumable checkpoint) after this much training time")
    p.add_argument("--save-every-minutes", type=float, default=None,
                   help="also save a resumable checkpoint mid-epoch this often, so a killed run loses at most this "
                        "much training (default: at the ends of epochs, see --full-save-every)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--target-dtype", choices=("auto", "bf16", "fp32"),
                   default=_default(CommonTrainConfig, "target_dtype"),
                   help="dtype of the frozen target (auto: bf16 on GPU, fp32 on CPU); loss math stays fp32")
    p.add_argument("--eval-every", type=int, default=_default(CommonTrainConfig, "eval_every"),
                   help="evaluate on the test split every N epochs (always after the last epoch)")
    p.add_argument("--sim-states", type=int, default=None,
                   help="decoding states per test batch for the simulated dynamic-tree acceptance length "
                        "(default 32; 0: no simulation, which also skips the target's greedy decoding of the test set)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batch samples of similar length together (less padding; seeded batch order)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="method", metavar="eagle1|eagle3|dflash", required=True)
    p1 = sub.add_parser("eagle1", help="EAGLE-1 feature-extrapolation head", description="Train an EAGLE-1 draft head.")
    _common_flags(p1, lr=3e-5, bs=4, epochs=20, grad_accum=1, warmup=2000)
    data = p1.add_mutually_exclusive_group(required=True)
    data.add_argument("--tmpdir", type=Path, nargs="+", metavar="DIR",
                      help="offline features written by `eaglespec dump-features` (several directories are read as "
                           "one dataset; EAGLE-3 features serve EAGLE-1 too)")
    data.add_argument("--data", type=Path, help="prepared dataset; the target runs on the fly (online)")
    p1.add_argument("--cpdir", type=Path, required=True, help="checkpoint directory (state_{epoch}/)")
    p1.add_argument("--save-freq", type=int, default=_default(Eagle1TrainConfig, "save_freq"),
                    help="save every N epochs (and the last)")
    p1.add_argument("--noise", choices=("uniform", "gaussian", "none"), default=_default(Eagle1TrainConfig, "noise"))
    p1.add_argument("--noise-std", type=float, default=_default(Eagle1TrainConfig, "noise_std"))
    p1.add_argument("--v-w", type=float, default=_default(Eagle1TrainConfig, "v_w"),
                    help="weight of the feature (SmoothL1) loss")
    p1.add_argument("--p-w", type=float, default=_default(Eagle1TrainConfig, "p_w"),
                    help="weight of the token (soft cross-entropy) loss")

    p3 = sub.add_parser("eagle3", help="EAGLE-3 head with training-time test", description="Train an EAGLE-3 draft head.")
    _common_flags(p3, lr=5e-5, bs=1, epochs=40, grad_accum=2, warmup=None)
    _data_flags(p3, Eagle3TrainConfig)
    p3.add_argument("--ttt-length", type=int, default=_default(Eagle3TrainConfig, "ttt_length"),
                    help="training-time-test steps")
    p3.add_argument("--step-weight", type=float, default=_default(Eagle3TrainConfig, "step_weight"),
                    help="loss weight of TTT step j is step_weight**j")
    p3.add_argument("--draft-vocab-size", type=int, default=None,
                    help="draft vocabulary size (default: min(target vocab, 32000))")
    p3.add_argument("--aux-layers", type=parse_layer_ids, default=None, help="aux layer ids a,b,c")
    p3.add_argument("--gradient-checkpointing", action="store_true")
    _objective_flags(p3, Eagle3TrainConfig)

    pd = sub.add_parser(DFlashTrainConfig.method, help="DFlash block drafter",
                        description="Train a DFlash draft: one forward drafts a block; the data sources are EAGLE-3's "
                        "(with --features, the layers they hold).")
    _common_flags(pd, lr=6e-4, bs=1, epochs=6, grad_accum=2, warmup=None)
    _data_flags(pd, DFlashTrainConfig)
    pd.add_argument("--block-size", type=int, default=_default(DFlashTrainConfig, "block_size"),
                    help="tokens per block, the anchor included (block_size - 1 drafted per step)")
    pd.add_argument("--num-layers", type=int, default=_default(DFlashTrainConfig, "num_layers"),
                    help="draft decoder layers (each of the target's width)")
    pd.add_argument("--aux-layers", type=parse_layer_ids, default=None,
                    help="target layers read, as Hugging Face hidden_states indices a,b,... (default: the features' "
                         "with --features, else one per draft layer, z-lab's choice)")
    pd.add_argument("--mask-token-id", type=int, default=None,
                    help="the token of the drafted slots (default: the tokenizer's mask token, else the first unused "
                         "embedding row, else padding, else end of text)")
    pd.add_argument("--num-anchors", type=int, default=_default(DFlashTrainConfig, "num_anchors"),
                    help="blocks per sequence and step")
    pd.add_argument("--gamma", type=float, default=None,
                    help="loss weight of slot k is exp(-(k - 1) / gamma) (default: 7 for blocks of 16, 4 for 8, "
                         "else half the block)")
    _objective_flags(pd, DFlashTrainConfig)


def _data_flags(p: argparse.ArgumentParser, config_class) -> None:
    p.add_argument("--trainpath", type=Path, help="raw training file (chat / fim / text)")
    p.add_argument("--testpath", type=Path, help="raw test file (default: --test-split of the training data)")
    p.add_argument("--data-format", choices=("chat", "fim", "text"), default=_default(config_class, "data_format"))
    p.add_argument("--tokenizer", default=None, help="tokenizer for raw files (default: the target's)")
    p.add_argument("--data", type=Path, help="prepared dataset (online target)")
    p.add_argument("--features", type=Path, nargs="+", metavar="DIR",
                   help="offline features written by `eaglespec dump-features` (several directories are read as "
                        "one dataset)")
    p.add_argument("--test-features", type=Path, nargs="+", metavar="DIR",
                   help="with --features: evaluate on the test split of these feature directories (the same "
                        "--test-split and --seed rule, so a chat in both is on the test side of each and never "
                        "trained on) instead of on --features' own; runs on different data then share one "
                        "validation set")
    p.add_argument("--savedir", type=Path, required=True, help="output directory (state_{epoch}/)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", type=Path, default=None)


def _objective_flags(p: argparse.ArgumentParser, config_class) -> None:
    label = (", label (cross-entropy on the data's own next token, z-lab's DFlash loss: training steps compute no "
             "target logits; meant for self-distilled data, whose tokens are the target's)"
             if LABEL_OBJECTIVE in config_class.objectives else "")
    p.add_argument("--objective", choices=config_class.objectives, default=_default(config_class, "objective"),
                   help="per-position loss: ce (soft cross-entropy, EAGLE's), tv (1 - sum min(p, q): one minus the "
                        "acceptance rate of speculative sampling), lk (-log of that rate, LK losses), ce+tv" + label)
    p.add_argument("--tv-weight", type=float, default=_default(config_class, "tv_weight"),
                   help="ce+tv: weight of the tv term")
    p.add_argument("--full-save-every", type=int, default=_default(config_class, "full_save_every"),
                   help="resumable state every N epochs and at the end (a 16-bit draft every epoch)")
    # deepspeed's launcher passes --local_rank; torchrun sets LOCAL_RANK instead.
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)


def _common_config(args: argparse.Namespace, output_dir: Path):
    return CommonTrainConfig(
        basepath=args.basepath, output_dir=output_dir, lr=args.lr, batch_size=args.bs, num_epochs=args.num_epochs,
        grad_accum=args.grad_accum, max_len=args.max_len, warmup_steps=args.warmup_steps, precision=args.precision,
        grad_clip=args.grad_clip, clip_mode=args.clip_mode, test_split=args.test_split, seed=args.seed,
        resume=args.resume, report_to=args.report_to, max_steps=args.max_steps,
        time_budget_minutes=args.time_budget_minutes, save_every_minutes=args.save_every_minutes,
        progress=args.progress, target_dtype=args.target_dtype,
        eval_every=args.eval_every, group_by_length=args.group_by_length, init_from=args.init_from,
        **({} if args.sim_states is None else {"sim_states": args.sim_states}),
    )


def _data_sources(args: argparse.Namespace) -> dict:
    return {"trainpath": args.trainpath, "testpath": args.testpath, "data_format": args.data_format,
            "tokenizer": args.tokenizer, "data": args.data, "features": args.features,
            "test_features": args.test_features, "deepspeed_config": args.deepspeed_config}


def run(args: argparse.Namespace) -> int:
    from eaglespec.training.distributed import destroy_distributed

    try:
        return _train(args)
    finally:
        destroy_distributed()


def _train(args: argparse.Namespace) -> int:
    from eaglespec.training.distributed import current_rank
    from eaglespec.training.run import train_dflash, train_eagle1, train_eagle3

    if args.method == "eagle1":
        cfg = Eagle1TrainConfig(
            common=_common_config(args, args.cpdir), tmpdir=args.tmpdir, data=args.data, save_freq=args.save_freq,
            noise=args.noise, noise_std=args.noise_std, v_w=args.v_w, p_w=args.p_w,
        )
        result = train_eagle1(cfg)
    elif args.method == DFlashTrainConfig.method:
        cfg = DFlashTrainConfig(
            common=_common_config(args, args.savedir), **_data_sources(args), block_size=args.block_size,
            num_layers=args.num_layers, aux_layers=args.aux_layers, mask_token_id=args.mask_token_id,
            num_anchors=args.num_anchors, gamma=args.gamma, objective=args.objective, tv_weight=args.tv_weight,
            full_save_every=args.full_save_every,
        )
        result = train_dflash(cfg)
    else:
        cfg = Eagle3TrainConfig(
            common=_common_config(args, args.savedir), **_data_sources(args), ttt_length=args.ttt_length,
            step_weight=args.step_weight,
            draft_vocab_size=args.draft_vocab_size, aux_layers=args.aux_layers,
            gradient_checkpointing=args.gradient_checkpointing, full_save_every=args.full_save_every,
            objective=args.objective, tv_weight=args.tv_weight,
        )
        result = train_eagle3(cfg)
    if current_rank() == 0:
        print(f"done: {result.state.step} optimizer steps, {result.state.epoch} epochs; "
              f"latest draft: {result.last_checkpoint}")
    return 0
