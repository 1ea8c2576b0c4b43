"""Typed training configurations of the three methods, validated once when built (by the CLI or a test)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from eaglespec.models.config import DFLASH, DFLASH_DEFAULT_BLOCK_SIZE
from eaglespec.training.data import SPLIT_RULE
from eaglespec.training.engine import PRECISIONS
from eaglespec.training.losses import BLOCK_OBJECTIVES, DEFAULT_OBJECTIVE, DEFAULT_TV_WEIGHT, OBJECTIVES
from eaglespec.training.metrics import REPORT_TO
from eaglespec.training.noise import NOISE_KINDS

CLIP_MODES = ("norm", "value")
EAGLE3_DEFAULT_MAX_DRAFT_VOCAB = 32000  # the reference's draft vocabulary for 128k-token targets
EAGLE3_WARMUP_FRACTION = 0.015  # warmup when --warmup-steps is not given (SpecForge's ratio)
# Tree estimate of the simulated acceptance length: decoding states simulated per test batch (--sim-states).
SIM_TREE_STATES_PER_BATCH = 32
DFLASH_NUM_ANCHORS = 64  # blocks per sequence in a DFlash step (SpecForge: 512 on GPUs); each is block_size rows
TARGET_DTYPES = ("auto", "bf16", "fp32")  # --target-dtype (auto: bf16 on GPU unless --precision fp32, else fp32)


@dataclass
class CommonTrainConfig:
    """Settings both methods share (each method's config embeds one)."""

    basepath: str
    output_dir: Path  # EAGLE-1 --cpdir, EAGLE-3 --savedir
    lr: float
    batch_size: int
    num_epochs: int
    grad_accum: int
    max_len: int
    warmup_steps: int | None
    precision: str = "auto"  # bf16 on GPU, fp32 on CPU
    grad_clip: float = 0.5
    clip_mode: str = "norm"
    test_split: float = 0.05
    seed: int = 0
    resume: bool = False
    report_to: str = "none"
    max_steps: int | None = None
    time_budget_minutes: float | None = None
    save_every_minutes: float | None = None  # a resumable checkpoint mid-epoch this often (None: at epoch ends)
    progress: bool = True
    eval_every: int = 1  # evaluate on the test split every N epochs (and after the last / a clean stop)
    sim_states: int = SIM_TREE_STATES_PER_BATCH  # simulated decoding states per test batch (0: no simulation)
    target_dtype: str = "auto"  # dtype of the frozen target (its features and logits; loss math stays fp32)
    group_by_length: bool = False  # batches of similar length (less padding); the order stays seeded per epoch
    init_from: Path | None = None  # start from this draft's weights (a fresh optimizer and lr schedule)
    # How the train/test split is drawn (not a flag): recorded so --resume refuses a run split another way.
    split_rule: str = dataclasses.field(default=SPLIT_RULE, init=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        positive = {"lr": self.lr, "bs": self.batch_size, "num_epochs": self.num_epochs,
                    "grad-accum": self.grad_accum, "max-len": self.max_len}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"--{name}: expected a positive value, got {value}")
        if self.max_len < 3:
            raise ValueError(f"--max-len: expected at least 3 (a draft position needs two tokens of context), got {self.max_len}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps: expected >= 0, got {self.warmup_steps}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"--precision: expected one of {('auto', *PRECISIONS)}, got {self.precision!r}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"--clip-mode: expected one of {CLIP_MODES}, got {self.clip_mode!r}")
        if self.grad_clip < 0:
            raise ValueError(f"--grad-clip: expected >= 0, got {self.grad_clip}")
        if not 0.0 <= self.test_split < 1.0:
            raise ValueError(f"--test-split: expected a fraction in [0, 1), got {self.test_split}")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"--report-to: expected one of {REPORT_TO}, got {self.report_to!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps: expected >= 1, got {self.max_steps}")
        for flag, minutes in (("--time-budget-minutes", self.time_budget_minutes),
                              ("--save-every-minutes", self.save_every_minutes)):
            if minutes is not None and minutes <= 0:
                raise ValueError(f"{flag}: expected > 0, got {minutes}")
        if self.eval_every < 1:
            raise ValueError(f"--eval-every: expected >= 1, got {self.eval_every}")
        if self.sim_states < 0:
            raise ValueError(f"--sim-states: expected >= 0, got {self.sim_states}")
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
            if not (self.init_from / "config.json").is_file():
                raise FileNotFoundError(f"--init-from {self.init_from}: no draft there (config.json not found)")
        if self.target_dtype not in TARGET_DTYPES:
            raise ValueError(f"--target-dtype: expected one of {TARGET_DTYPES}, got {self.target_dtype!r}")


@dataclass
class Eagle1TrainConfig:
    common: CommonTrainConfig
    tmpdir: list[Path] | None = None  # offline features of `dump-features` (one or more directories)
    data: Path | None = None  # prepared dataset (online: the target runs per batch)
    save_freq: int = 5
    noise: str = "uniform"
    noise_std: float = 0.2
    v_w: float = 1.0
    p_w: float = 0.1

    method = "eagle1"
    # Settings that define the data order and the lr schedule: --resume refuses to change them.
    SCHEDULE_KEYS = ("method", "lr", "batch_size", "grad_accum", "num_epochs", "warmup_steps", "max_len", "seed",
                     "test_split", "split_rule", "max_steps", "init_from")

    def __post_init__(self) -> None:
        self.tmpdir = _path_list(self.tmpdir)
        if (self.tmpdir is None) == (self.data is None):
            raise ValueError("give exactly one of --tmpdir FEATURES_DIR (offline) or --data PREPARED_DIR (online)")
        if self.save_freq < 1:
            raise ValueError(f"--save-freq: expected >= 1, got {self.save_freq}")
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"--noise: expected one of {NOISE_KINDS}, got {self.noise!r}")
        if self.noise_std < 0:
            raise ValueError(f"--noise-std: expected >= 0, got {self.noise_std}")
        if self.v_w < 0 or self.p_w < 0 or self.v_w + self.p_w == 0:
            raise ValueError(f"--v-w/--p-w: expected non-negative weights, not both 0; got {self.v_w}, {self.p_w}")

    def to_dict(self) -> dict:
        return {"method": self.method, **_plain(self.common), **{k: v for k, v in _plain(self).items() if k != "common"}}


@dataclass
class Eagle3TrainConfig:
    common: CommonTrainConfig
    trainpath: Path | None = None  # raw files (chat / fim / text) ...
    testpath: Path | None = None
    data_format: str = "chat"
    tokenizer: str | None = None  # for raw files; default: the target's
    data: Path | None = None  # ... or a prepared dataset ...
    features: list[Path] | None = None  # ... or dumped features (one or more directories)
    test_features: list[Path] | None = None  # evaluate on these directories' test split instead of --features'
    deepspeed_config: Path | None = None
    ttt_length: int = 7
    step_weight: float = 0.8
    draft_vocab_size: int | None = None
    aux_layers: list[int] | None = None
    gradient_checkpointing: bool = False
    full_save_every: int = 10
    objective: str = DEFAULT_OBJECTIVE  # one of OBJECTIVES
    tv_weight: float = DEFAULT_TV_WEIGHT  # ce+tv's weight of 1 - alpha

    method = "eagle3"
    objectives = OBJECTIVES
    SCHEDULE_KEYS = Eagle1TrainConfig.SCHEDULE_KEYS + ("ttt_length", "step_weight", "draft_vocab_size", "aux_layers",
                                                       "objective", "tv_weight")

    def __post_init__(self) -> None:
        _check_data_source(self)
        if self.ttt_length < 1:
            raise ValueError(f"--ttt-length: expected >= 1, got {self.ttt_length}")
        if not 0 < self.step_weight <= 1:
            raise ValueError(f"--step-weight: expected a value in (0, 1], got {self.step_weight}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 1:
            raise ValueError(f"--draft-vocab-size: expected >= 1, got {self.draft_vocab_size}")
        if self.full_save_every < 1:
            raise ValueError(f"--full-save-every: expected >= 1, got {self.full_save_every}")
        _check_objective(self)

    def to_dict(self) -> dict:
        return {"method": self.method, **_plain(self.common), **{k: v for k, v in _plain(self).items() if k != "common"}}


@dataclass
class DFlashTrainConfig:
    """`train dflash`: the same data sources as EAGLE-3 (raw files, a prepared dataset, or EAGLE-3 features,
    whose aux layers it then reads); the draft's shape and the block loss."""

    common: CommonTrainConfig
    trainpath: Path | None = None
    testpath: Path | None = None
    data_format: str = "chat"
    tokenizer: str | None = None
    data: Path | None = None
    features: list[Path] | None = None
    test_features: list[Path] | None = None
    deepspeed_config: Path | None = None
    block_size: int = DFLASH_DEFAULT_BLOCK_SIZE
    num_layers: int = 1
    aux_layers: list[int] | None = None  # default: the features' (with --features), else DFlash's default
    mask_token_id: int | None = None  # default: models.build.dflash_mask_token
    num_anchors: int = DFLASH_NUM_ANCHORS
    gamma: float | None = None  # loss decay; default training.dflash.default_gamma(block_size)
    objective: str = DEFAULT_OBJECTIVE
    tv_weight: float = DEFAULT_TV_WEIGHT
    full_save_every: int = 10

    method = DFLASH
    objectives = BLOCK_OBJECTIVES
    SCHEDULE_KEYS = Eagle1TrainConfig.SCHEDULE_KEYS + ("block_size", "num_layers", "aux_layers", "mask_token_id",
                                                       "num_anchors", "gamma", "objective", "tv_weight")

    def __post_init__(self) -> None:
        _check_data_source(self)
        if self.block_size < 2:
            raise ValueError(f"--block-size: expected at least 2 (the anchor and one drafted token), got {self.block_size}")
        for flag, value in (("--num-layers", self.num_layers), ("--num-anchors", self.num_anchors),
                            ("--full-save-every", self.full_save_every)):
            if value < 1:
                raise ValueError(f"{flag}: expected >= 1, got {value}")
        if self.gamma is not None and self.gamma <= 0:
            raise ValueError(f"--gamma: expected > 0, got {self.gamma}")
        _check_objective(self)

    def to_dict(self) -> dict:
        return {"method": self.method, **_plain(self.common), **{k: v for k, v in _plain(self).items() if k != "common"}}


def _check_data_source(cfg) -> None:
    cfg.features = _path_list(cfg.features)
    cfg.test_features = _path_list(cfg.test_features)
    sources = [cfg.trainpath is not None, cfg.data is not None, cfg.features is not None]
    if sum(sources) != 1:
        raise ValueError("give exactly one data source: --trainpath FILE [--testpath FILE] --data-format ..., "
                         "--data PREPARED_DIR, or --features DIR")
    if cfg.testpath is not None and cfg.trainpath is None:
        raise ValueError("--testpath needs --trainpath")
    if cfg.test_features is not None and cfg.features is None:
        raise ValueError("--test-features needs --features")


def _check_objective(cfg) -> None:
    if cfg.objective not in cfg.objectives:
        raise ValueError(f"--objective: expected one of {', '.join(cfg.objectives)}, got {cfg.objective!r}")
    if cfg.tv_weight < 0:
        raise ValueError(f"--tv-weight: expected >= 0, got {cfg.tv_weight}")


def _path_list(value) -> list[Path] | None:
    """One feature directory or several, as a list of paths (None stays None)."""
    if value is None:
        return None
    return [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]


def _plain(obj) -> dict:
    """Dataclass fields as JSON-friendly values (paths as strings)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, Path) for x in v):
            v = [str(x) for x in v]
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out
