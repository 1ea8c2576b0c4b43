"""Assemble a training run from a validated config: target, data, draft, engine, trainer; then train.

`train_eagle1(cfg)` / `train_eagle3(cfg)` / `train_dflash(cfg)` are what `eaglespec train eagle1|eagle3|dflash`
call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from eaglespec.models import DFlashShape, TargetModel, build_draft, dflash_mask_token, load_draft, resolve_model_path
from eaglespec.models.config import DFLASH, DraftConfig
from eaglespec.models.draft import EagleDraftModel
from eaglespec.training.checkpoint import STATE_DIR, TrainState, find_latest_complete, load_checkpoint
from eaglespec.training.config import (
    EAGLE3_DEFAULT_MAX_DRAFT_VOCAB,
    EAGLE3_WARMUP_FRACTION,
    CommonTrainConfig,
    Eagle1TrainConfig,
    DFlashTrainConfig,
    Eagle3TrainConfig,
)
from eaglespec.training.data import (
    OfflineFeatureSource,
    OnlineTargetSource,
    iterate_batches,
    load_prepared_dataset,
    split_indices,
    trained_token_count,
)
from eaglespec.training.distributed import broadcast_object, current_rank, detect_launch, init_distributed
from eaglespec.training.engine import launch_world_size, load_ds_settings, make_engine
from eaglespec.training.loop import LoopConfig, TrainData, Trainer, steps_per_epoch
from eaglespec.training.dflash import DFlashMethod
from eaglespec.training.methods import SIM_DEPTH, Eagle1Method, Eagle3Method, trained_rows
from eaglespec.training.metrics import make_logger
from eaglespec.training.schedule import OptimizerConfig

logger = logging.getLogger(__name__)

DRAFT_VOCAB_CHECK_BATCHES = 8  # batches run through the target before training to find trained positions


@dataclass
class TrainResult:
    state: TrainState
    output_dir: Path
    last_checkpoint: Path | None


def _device(require_group: bool = False) -> torch.device:
    """This rank's device; joins the process group when launched by torchrun / deepspeed (DeepSpeed
    needs a group even in one process)."""
    return init_distributed(detect_launch(), require_group)


def _precision(common: CommonTrainConfig, device: torch.device) -> str:
    if common.precision != "auto":
        return common.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _target_dtype(common: CommonTrainConfig, device: torch.device, precision: str) -> torch.dtype:
    """--target-dtype; auto: bf16 on a GPU (unless --precision fp32), fp32 on a CPU."""
    if common.target_dtype != "auto":
        return torch.bfloat16 if common.target_dtype == "bf16" else torch.float32
    return torch.bfloat16 if device.type == "cuda" and precision != "fp32" else torch.float32


def _load_target(common: CommonTrainConfig, device: torch.device, precision: str) -> TargetModel:
    # The frozen target may run in 16 bits (--target-dtype); all loss math is in fp32 (TargetBatch).
    dtype = _target_dtype(common, device, precision)
    return TargetModel.from_pretrained(resolve_model_path(common.basepath), dtype=dtype, device=device)


def _split(dataset, common: CommonTrainConfig, what: str) -> tuple[list[int], list[int]]:
    if len(dataset) == 0:
        raise ValueError(f"{what}: the dataset is empty")
    return split_indices(dataset, common.test_split, common.seed)


def _check_trainable(dataset, indices: list[int], max_len: int, what: str) -> None:
    if not indices:
        raise ValueError(f"{what}: no training samples (the dataset is empty or all of it went to the test split)")
    if trained_token_count(dataset, indices, max_len) == 0:
        raise ValueError(f"{what}: every loss_mask is 0 within --max-len {max_len} (no token to train on); "
                         "check the data format / loss masks of the prepared data")


def _offline_dataset(paths: list[Path], target: TargetModel, method: str, aux_layer_ids: list[int] | None):
    """The feature directories as one dataset, each checked against the target, method and aux layers."""
    from eaglespec.data.features import FeatureDatasets
    from eaglespec.distill.features import check_features_match

    dataset = FeatureDatasets(paths)
    for directory, manifest in dataset.manifests:
        try:
            check_features_match(manifest, target, method, aux_layer_ids)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from e
    return dataset


def _paths_text(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _check_fresh_output(common: CommonTrainConfig) -> None:
    """A new run never overwrites checkpoints. --resume over checkpoints none of which holds the training
    state (a run killed before its first full save, or stopped with 16-bit drafts only) starts over, after
    moving them aside, so a finished draft is never overwritten."""
    out = common.output_dir
    states = sorted(p.name for p in out.iterdir() if STATE_DIR.match(p.name)) if out.is_dir() else []
    if states and not common.resume:
        raise FileExistsError(f"{out}: already holds checkpoints (state_*); pass --resume to continue that run "
                              "or choose another output directory")
    if states and find_latest_complete(out, resumable=True) is None:
        if detect_launch().rank != 0:  # every rank makes the same decision; rank 0 moves the checkpoints
            return
        kept = out / f"not-resumable-{time.strftime('%Y%m%d-%H%M%S')}"
        kept.mkdir()
        for name in states:
            (out / name).rename(kept / name)
        logger.warning("--resume: %s holds %s but none with the training state (optimizer, schedule, data "
                       "position; written every --full-save-every, EAGLE-1: --save-freq, epochs and at the end): "
                       "starting over from epoch 1; they were moved to %s (train one further with --init-from "
                       "and another output directory)", out, ", ".join(states), kept)


def _init_draft_config(common: CommonTrainConfig, method: str) -> DraftConfig | None:
    """The --init-from draft's config, checked before anything is loaded (None without --init-from)."""
    if common.init_from is None:
        return None
    try:
        config = DraftConfig.load(common.init_from)
    except (ValueError, KeyError) as e:
        raise ValueError(f"--init-from {common.init_from}: {e} (a reference EAGLE or speculators checkpoint is "
                         "converted with `eaglespec import` first)") from e
    if config.method != method:
        raise ValueError(f"--init-from {common.init_from}: an {config.method} draft, but this is train {method}")
    return config


def _initial_draft(common: CommonTrainConfig, target: TargetModel, device: torch.device, build):
    """`build()` (a new draft), or the --init-from draft in fp32, made this target's as `build_draft` makes a
    new one: its embedding is the target's and its config names the target. Its tuned tree is dropped: it was
    chosen for the old weights."""
    if common.init_from is None:
        return build().to(device)
    draft = load_draft(common.init_from, target=target, dtype=torch.float32, device=device)
    if isinstance(draft, EagleDraftModel):  # a DFlash draft has no embedding of its own: it is the target's
        with torch.no_grad():
            draft.embed_tokens.weight.copy_(target.embed_tokens.weight.float())
    draft.config.target = target.info()
    draft.config.decoding = None
    logger.info("starting from the weights of %s", common.init_from)
    return draft


def _optimizer_config(common: CommonTrainConfig, n_train: int, world_size: int, default_warmup: int,
                      whole_groups: bool = False) -> OptimizerConfig:
    per_epoch = steps_per_epoch(n_train, common.batch_size, common.grad_accum, 0, world_size, whole_groups)
    if per_epoch == 0:
        raise ValueError(f"{n_train} training samples give each of the {world_size} process(es) fewer micro-batches "
                         f"of --bs {common.batch_size} per epoch than --grad-accum {common.grad_accum}, so DeepSpeed "
                         "would never step; use more data, a smaller --bs or a smaller --grad-accum")
    total = per_epoch * common.num_epochs
    if common.max_steps is not None:
        total = min(total, common.max_steps)
    warmup = common.warmup_steps if common.warmup_steps is not None else default_warmup
    return OptimizerConfig(lr=common.lr, total_steps=max(1, total), warmup_steps=min(warmup, max(0, total - 1)),
                           grad_clip=common.grad_clip, clip_mode=common.clip_mode)


def _run(method, draft: EagleDraftModel, data: TrainData, common: CommonTrainConfig, engine, run_config: dict,
         schedule_keys: tuple[str, ...], resumable_every: int, per_epoch_dtype: torch.dtype | None) -> TrainResult:
    out = common.output_dir
    out.mkdir(parents=True, exist_ok=True)
    # The data order and the lr schedule also depend on the process count and the data: a resume with
    # either changed would silently train a different schedule, so they are checked like the flags.
    run_config = {**run_config, "world_size": engine.world_size, "train_samples": len(data.train_indices)}
    schedule_keys = (*schedule_keys, "world_size", "train_samples")
    state = TrainState()
    if common.resume:
        latest = find_latest_complete(out, resumable=True)
        if latest is None:
            logger.warning("--resume: no complete resumable checkpoint in %s; starting from scratch", out)
        else:
            state = load_checkpoint(latest, draft, engine, run_config, schedule_keys)
            if engine.is_main:
                print(f"resumed from {latest} (step {state.step}, epoch {state.epoch})", flush=True)
    loop_cfg = LoopConfig(
        output_dir=out, num_epochs=common.num_epochs, batch_size=common.batch_size, grad_accum=common.grad_accum,
        max_len=common.max_len, seed=common.seed, resumable_every=resumable_every,
        per_epoch_draft_dtype=per_epoch_dtype, max_steps=common.max_steps,
        time_budget_s=common.time_budget_minutes * 60 if common.time_budget_minutes else None,
        save_every_s=common.save_every_minutes * 60 if common.save_every_minutes else None,
        progress=common.progress, run_config=run_config, sim_depth=SIM_DEPTH.get(method.name, method.num_positions),
        eval_every=common.eval_every, group_by_length=common.group_by_length,
    )
    metrics_logger = make_logger(common.report_to if engine.is_main else "none", out, run_config)
    try:
        state = Trainer(method, draft, engine, data, loop_cfg, metrics_logger).train(state)
    finally:
        metrics_logger.close()
    return TrainResult(state, out, find_latest_complete(out, resumable=False))


# --------------------------------------------------------------------------------------------------
def train_eagle1(cfg: Eagle1TrainConfig) -> TrainResult:
    common = cfg.common
    _check_fresh_output(common)
    _init_draft_config(common, "eagle1")
    device = _device()
    precision = _precision(common, device)
    target = _load_target(common, device, precision)
    if cfg.tmpdir is not None:
        dataset, source = _offline_dataset(cfg.tmpdir, target, "eagle1", None), OfflineFeatureSource(target, "eagle1", device)
    else:
        dataset, source = load_prepared_dataset(cfg.data), OnlineTargetSource(target, "eagle1", None, device)
    what = _paths_text(cfg.tmpdir) if cfg.tmpdir is not None else str(cfg.data)
    train_idx, test_idx = _split(dataset, common, what)
    _check_trainable(dataset, train_idx, common.max_len, what)
    data = TrainData(dataset, train_idx, dataset, test_idx, source, target)
    draft = _initial_draft(common, target, device, lambda: build_draft(target, "eagle1", seed=common.seed))
    opt = _optimizer_config(common, len(train_idx), launch_world_size(), default_warmup=0)
    engine = make_engine(draft, opt, None, precision, common.grad_accum)
    method = Eagle1Method(cfg.noise, cfg.noise_std, cfg.v_w, cfg.p_w, common.sim_states)
    return _run(method, draft, data, common, engine, cfg.to_dict(), cfg.SCHEDULE_KEYS, cfg.save_freq, None)


# --------------------------------------------------------------------------------------------------
def _eagle3_datasets(cfg: Eagle3TrainConfig, target: TargetModel, device: torch.device):
    """(train dataset, train indices, test dataset, test indices, target-side source)."""
    common = cfg.common
    if cfg.features is not None:
        dataset = _offline_dataset(cfg.features, target, "eagle3", cfg.aux_layers)
        train_idx, test_idx = _split(dataset, common, _paths_text(cfg.features))
        test, test_idx = _test_features(cfg, target, dataset, test_idx)
        return dataset, train_idx, test, test_idx, OfflineFeatureSource(target, "eagle3", device)
    source = OnlineTargetSource(target, "eagle3", None, device)  # aux ids are set once the draft exists
    if cfg.data is not None:
        dataset = load_prepared_dataset(cfg.data)
        train_idx, test_idx = _split(dataset, common, str(cfg.data))
        return dataset, train_idx, dataset, test_idx, source
    train = _prepare_raw(cfg, cfg.trainpath, "train")
    if cfg.testpath is None:
        train_idx, test_idx = _split(train, common, str(cfg.trainpath))
        return train, train_idx, train, test_idx, source
    test = _prepare_raw(cfg, cfg.testpath, "test")
    return train, list(range(len(train))), test, list(range(len(test))), source


def _test_features(cfg, target: TargetModel, dataset, test_idx: list[int]):
    """(test dataset, indices): --test-features' test split, else --features' own."""
    if cfg.test_features is None:
        return dataset, test_idx
    what = f"--test-features {_paths_text(cfg.test_features)}"
    test = _offline_dataset(cfg.test_features, target, "eagle3", cfg.aux_layers)
    _, fixed = _split(test, cfg.common, what)
    if not fixed:
        raise ValueError(f"{what}: no test sample (--test-split {cfg.common.test_split})")
    return test, fixed


def _prepare_raw(cfg: Eagle3TrainConfig, path: Path, split: str):
    """Tokenise a raw file with the data pipeline into savedir/prepared/{split} (redone every run: cheap
    next to training, and never stale)."""
    from eaglespec.data import prepare_dataset

    out = cfg.common.output_dir / "prepared" / split
    tokenizer = cfg.tokenizer or resolve_model_path(cfg.common.basepath)
    error = None
    if current_rank() == 0:  # one writer; the other ranks wait, then read the same directory
        try:
            prepare_dataset(path, tokenizer, out, data_format=cfg.data_format, max_len=cfg.common.max_len,
                            overwrite=True)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            error = f"{type(e).__name__}: {e}"
    error = broadcast_object(error)  # every rank fails with rank 0's message instead of waiting forever
    if error is not None:
        raise ValueError(f"preparing {path} failed on rank 0: {error}")
    return load_prepared_dataset(out)


def _draft_vocab(cfg: Eagle3TrainConfig, dataset, train_idx: list[int], target: TargetModel) -> torch.Tensor:
    """Sorted target ids of the draft vocabulary, counted over the training samples' trained tokens."""
    import datasets

    from eaglespec.data import build_draft_vocab

    V = target.vocab_size
    Vd = cfg.draft_vocab_size or min(V, EAGLE3_DEFAULT_MAX_DRAFT_VOCAB)
    if Vd == V:
        return torch.arange(V)
    rows = [dataset[i] for i in train_idx]
    table = datasets.Dataset.from_dict({"input_ids": [r["input_ids"].tolist() for r in rows],
                                        "loss_mask": [r["loss_mask"].tolist() for r in rows]})
    vocab = build_draft_vocab(table, V, Vd)
    logger.info("draft vocabulary: %d of %d tokens, covering %.1f%% of trained tokens", Vd, V, 100 * vocab.coverage)
    return vocab.used_tokens


def _check_draft_vocab_trainable(data: TrainData, draft: EagleDraftModel, common: CommonTrainConfig) -> None:
    """Zero trained positions after the draft-vocabulary mask (loss mask AND target argmax in the vocab)
    would train nothing: refuse before training."""
    batches = iterate_batches(data.train_dataset, data.train_indices, common.batch_size, common.max_len)
    for i, batch in enumerate(batches):
        if i == DRAFT_VOCAB_CHECK_BATCHES:
            return
        b, _p = trained_rows(data.source(batch), draft.t2d)
        if b.numel() > 0:
            return
    raise ValueError(f"the training data yields zero trained tokens after the draft-vocabulary mask in its first "
                     f"{DRAFT_VOCAB_CHECK_BATCHES} batches (the target's next token is never in the "
                     f"{draft.config.draft_vocab_size}-token draft vocabulary where loss_mask is 1); use a larger "
                     "--draft-vocab-size or check the loss masks")


def _with_init_shape(cfg: Eagle3TrainConfig, init: DraftConfig | None) -> Eagle3TrainConfig:
    """With --init-from, the draft vocabulary size and aux layers are the draft's own (so the features are
    checked against them and the run records them); flags that say otherwise are an error."""
    if init is None:
        return cfg
    for flag, value, own in (("--draft-vocab-size", cfg.draft_vocab_size, init.draft_vocab_size),
                             ("--aux-layers", cfg.aux_layers, list(init.aux_layer_ids))):
        if value is not None and value != own:
            raise ValueError(f"{flag} {value}: the --init-from draft {cfg.common.init_from} has {own}; drop the "
                             "flag to keep the draft's own")
    return dataclasses.replace(cfg, draft_vocab_size=init.draft_vocab_size, aux_layers=list(init.aux_layer_ids))


def _launch(cfg: Eagle3TrainConfig | DFlashTrainConfig):
    """(DeepSpeed settings or None, this rank's device, precision, world size) of an EAGLE-3 / DFlash run."""
    common, world_size, ds = cfg.common, launch_world_size(), None
    if cfg.deepspeed_config is not None:
        ds = load_ds_settings(cfg.deepspeed_config, common.batch_size, common.grad_accum, world_size, common.grad_clip,
                              common.lr)
    device = _device(require_group=ds is not None)
    return ds, device, _precision(common, device) if ds is None else ds.precision, world_size


def _warmup_engine(draft, common: CommonTrainConfig, n_train: int, world_size: int, ds, precision: str):
    """The engine of an EAGLE-3 / DFlash run, its warmup EAGLE3_WARMUP_FRACTION of all steps unless given."""
    whole_groups = ds is not None  # DeepSpeed owns the accumulation boundary (see DeepSpeedEngine)
    per_epoch = steps_per_epoch(n_train, common.batch_size, common.grad_accum, 0, world_size, whole_groups)
    opt = _optimizer_config(common, n_train, world_size,
                            default_warmup=math.ceil(EAGLE3_WARMUP_FRACTION * per_epoch * common.num_epochs),
                            whole_groups=whole_groups)
    return make_engine(draft, opt, ds, precision, common.grad_accum)


def train_eagle3(cfg: Eagle3TrainConfig) -> TrainResult:
    common = cfg.common
    _check_fresh_output(common)
    cfg = _with_init_shape(cfg, _init_draft_config(common, "eagle3"))
    ds, device, precision, world_size = _launch(cfg)
    target = _load_target(common, device, precision)
    train_ds, train_idx, test_ds, test_idx, source = _eagle3_datasets(cfg, target, device)
    what = str(cfg.trainpath or cfg.data or _paths_text(cfg.features))
    _check_trainable(train_ds, train_idx, common.max_len, what)
    draft = _initial_draft(common, target, device, lambda: build_draft(
        target, "eagle3", aux_layer_ids=cfg.aux_layers, used_tokens=_draft_vocab(cfg, train_ds, train_idx, target),
        seed=common.seed))
    if isinstance(source, OnlineTargetSource):
        source.aux_layer_ids = draft.config.aux_layer_ids
    data = TrainData(train_ds, train_idx, test_ds, test_idx, source, target)
    _check_draft_vocab_trainable(data, draft, common)
    engine = _warmup_engine(draft, common, len(train_idx), world_size, ds, precision)
    method = Eagle3Method(cfg.ttt_length, cfg.step_weight, cfg.gradient_checkpointing, common.sim_states,
                          cfg.objective, cfg.tv_weight)
    sixteen_bit = torch.float16 if precision == "fp16" else torch.bfloat16
    return _run(method, draft, data, common, engine, cfg.to_dict(), cfg.SCHEDULE_KEYS, cfg.full_save_every, sixteen_bit)


# --------------------------------------------------------------------------------------------------
def _dflash_shape(cfg: DFlashTrainConfig, target: TargetModel) -> DFlashShape:
    """The draft's layers, block size and mask token (default: the tokenizer's choice, see dflash_mask_token)."""
    mask = cfg.mask_token_id
    if mask is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or resolve_model_path(cfg.common.basepath))
        mask = dflash_mask_token(target.config, tokenizer)
    return DFlashShape(cfg.num_layers, cfg.block_size, mask)


def _with_feature_layers(cfg: DFlashTrainConfig) -> DFlashTrainConfig:
    """From EAGLE-3 features, DFlash reads the layers they hold unless --aux-layers names them."""
    if cfg.features is None or cfg.aux_layers is not None:
        return cfg
    from eaglespec.data.features import FeatureDatasets

    return dataclasses.replace(cfg, aux_layers=list(FeatureDatasets(cfg.features).manifests[0][1].aux_layer_ids))


def train_dflash(cfg: DFlashTrainConfig) -> TrainResult:
    common = cfg.common
    _check_fresh_output(common)
    init = _init_draft_config(common, DFLASH)
    cfg = _with_feature_layers(cfg if init is None else dataclasses.replace(
        cfg, aux_layers=list(init.aux_layer_ids), block_size=init.block_size, num_layers=init.num_hidden_layers,
        mask_token_id=init.mask_token_id))
    ds, device, precision, world_size = _launch(cfg)
    target = _load_target(common, device, precision)
    train_ds, train_idx, test_ds, test_idx, source = _eagle3_datasets(cfg, target, device)
    _check_trainable(train_ds, train_idx, common.max_len, str(cfg.trainpath or cfg.data or _paths_text(cfg.features)))
    shape = _dflash_shape(cfg, target)
    draft = _initial_draft(common, target, device, lambda: build_draft(
        target, DFLASH, aux_layer_ids=cfg.aux_layers, seed=common.seed, dflash=shape))
    if isinstance(source, OnlineTargetSource):
        source.aux_layer_ids = draft.config.aux_layer_ids
    data = TrainData(train_ds, train_idx, test_ds, test_idx, source, target)
    engine = _warmup_engine(draft, common, len(train_idx), world_size, ds, precision)
    method = DFlashMethod(cfg.block_size, cfg.num_anchors, cfg.gamma, cfg.objective, cfg.tv_weight, seed=common.seed)
    sixteen_bit = torch.float16 if precision == "fp16" else torch.bfloat16
    run_config = {**cfg.to_dict(), "aux_layers": list(draft.config.aux_layer_ids),
                  "mask_token_id": draft.config.mask_token_id}
    return _run(method, draft, data, common, engine, run_config, cfg.SCHEDULE_KEYS, cfg.full_save_every, sixteen_bit)
