"""The recipe's one typed config: every default lives here, the CLI reads its defaults from these fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

MAX_PARAMETERS = 20_000_000  # issue 37: the code model has at most 20M parameters
MIN_HEAD_DIM = 32  # issue 37: head_dim >= 32 (smaller heads are slow and rare in engines)


@dataclass(frozen=True)
class ModelShape:
    """A LlamaForCausalLM's size (the vocabulary comes from the tokenizer)."""

    hidden_size: int = 256
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 704  # ~8/3 x hidden, rounded to 64, as Llama sizes its SwiGLU

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class RecipeConfig:
    """Data, tokenizer, model and training of the FIM code model. Saved beside the checkpoints."""

    output: str
    source: str = ""  # standard-library root; "" = this interpreter's sysconfig stdlib path
    seed: int = 0
    heldout_fraction: float = 0.05  # share of files held out (by a seeded hash of the relative path)
    vocab_size: int = 12288  # issue 37: 8-16k; a multiple of 64 for the embedding matmul
    fim_rate: float = 0.5  # issue 37: the FIM transformation on about half of the samples
    spm_rate: float = 0.5  # of the FIM samples, the share in SPM layout (the rest PSM)
    seq_len: int = 512
    batch_size: int = 8  # 4k tokens a step: ~9 s here with one thread under load (see recipes/code/README.md)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr x this
    warmup_steps: int = 50
    weight_decay: float = 0.1
    max_steps: int = 100_000  # the lr schedule follows whichever of steps or time is further along
    time_budget_min: float = 120.0  # issue 37: at most 120 minutes of training (CPU time; see training.py)
    eval_every: int = 100
    checkpoint_every_s: float = 300.0  # a checkpoint every 5 minutes bounds the work lost to an interruption
    heldout_rows: int = 64  # held-out rows scored at each evaluation (seq_len tokens each)
    threads: int = 0  # torch threads; 0 = torch's default
    shape: ModelShape = ModelShape()

    def check(self) -> None:
        """Reject values that cannot train, naming the field."""
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction: expected a value in (0, 1), got {self.heldout_fraction}")
        for name in ("fim_rate", "spm_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        for name in ("vocab_size", "seq_len", "batch_size", "max_steps", "eval_every", "heldout_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.time_budget_min <= 0:
            raise ValueError(f"time_budget_min: expected minutes > 0, got {self.time_budget_min}")
        _check_shape(self.shape)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_json(path: Path) -> RecipeConfig:
        raw = json.loads(path.read_text())
        try:
            return RecipeConfig(**{**raw, "shape": ModelShape(**raw.get("shape", {}))})
        except TypeError as error:
            raise ValueError(f"{path}: not a recipe config ({error})") from error


def _check_shape(shape: ModelShape) -> None:
    if shape.hidden_size % shape.num_heads or shape.num_heads % shape.num_kv_heads:
        raise ValueError(f"shape: hidden_size {shape.hidden_size} must divide into num_heads {shape.num_heads}, "
                         f"and num_heads into num_kv_heads {shape.num_kv_heads}")
    if shape.head_dim < MIN_HEAD_DIM:
        raise ValueError(f"shape: head_dim {shape.head_dim} < {MIN_HEAD_DIM} (hidden_size / num_heads)")
