"""Draft-head configuration: one typed record, validated once, saved as config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eaglespec._io import read_json

DFLASH = "dflash"  # the block drafter's method name (EAGLE's are "eagle1" and "eagle3")
METHODS = ("eagle1", "eagle3", DFLASH)
FEATURE_METHODS = ("eagle3", DFLASH)  # drafts that read target layers by aux_layer_ids (EAGLE-1 reads the last)

# How `aux_layer_ids` are numbered. Ours: id k = Hugging Face `hidden_states[k]` = the INPUT of
# decoder layer k (hidden_states[0] is the embedding output). vLLM numbers the same way; SGLang
# numbers by layer OUTPUT (its id = ours - 1). Export converts; the checkpoint says which.
AUX_CONVENTION = "hf_hidden_states_index"

EAGLE3_NUM_AUX_LAYERS = 3


def default_aux_layer_ids(num_hidden_layers: int) -> list[int]:
    """EAGLE-3 default: inputs of decoder layers 2, L//2 and L-3 (e.g. 2/16/29 for L = 32).

    Fallback for shallow targets where those are not strictly increasing (L < 8, e.g. the 5-layer
    stories260K): [1, L//2, L-1], i.e. low / middle / high layer inputs; for L < 4 ids may repeat.
    """
    L = num_hidden_layers
    if L < 1:
        raise ValueError(f"target has num_hidden_layers={L}; need at least 1")
    ids = [2, L // 2, L - 3]
    if ids[0] < ids[1] < ids[2]:
        return ids
    return [min(1, L - 1), L // 2, L - 1]


def validate_aux_layer_ids(ids: list[int], num_hidden_layers: int) -> list[int]:
    ids = [int(i) for i in ids]
    if len(ids) != EAGLE3_NUM_AUX_LAYERS:
        raise ValueError(f"aux layer ids: expected {EAGLE3_NUM_AUX_LAYERS} ids, got {ids}")
    bad = [i for i in ids if not 0 <= i < num_hidden_layers]
    if bad:
        raise ValueError(
            f"aux layer ids {bad} out of range: the target has {num_hidden_layers} decoder layers, so valid ids "
            f"(Hugging Face hidden_states index = input of decoder layer k) are 0..{num_hidden_layers - 1}"
        )
    return ids


DFLASH_DEFAULT_BLOCK_SIZE = 8  # speculators' default (16 on GPUs in z-lab's); smaller suits a CPU (issue 36)


@dataclass(frozen=True)
class DFlashShape:
    """What a new DFlash draft is made of beyond its target's sizes."""

    num_layers: int = 1
    block_size: int = DFLASH_DEFAULT_BLOCK_SIZE
    mask_token_id: int | None = None  # None: chosen from the tokenizer by `models.build.dflash_mask_token`


def default_dflash_layer_ids(num_hidden_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's default target layers, one per draft layer, as Hugging Face hidden_states indices (= z-lab's
    layer-output ids + 1): the middle layer's output for one draft layer, else evenly from the output of layer 1
    to that of layer L-3 (z-lab's `build_target_layer_ids`), never the last layer (llama.cpp cannot capture it)."""
    L, n = num_hidden_layers, num_draft_layers
    if L < 2:
        raise ValueError(f"dflash needs a target of at least 2 layers, got {L}")
    if n == 1:
        return [L // 2 + 1 if L // 2 + 1 < L else L - 1]
    start, end = 1, max(L - 3, 1)
    return [min(round(start + i * (end - start) / (n - 1)) + 1, L - 1) for i in range(n)]


def validate_dflash_layer_ids(ids: list[int], num_hidden_layers: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 1 <= i < num_hidden_layers]
    if not ids or bad:
        raise ValueError(f"dflash target layer ids {bad or ids}: the target has {num_hidden_layers} decoder layers, "
                         f"so valid ids (Hugging Face hidden_states index = output of layer k - 1) are "
                         f"1..{num_hidden_layers - 1}")
    return ids


@dataclass
class TargetInfo:
    """Identity of the target a draft was built for; checked when both are loaded together."""

    name_or_path: str
    model_type: str
    architectures: list[str]
    hidden_size: int
    vocab_size: int
    num_hidden_layers: int


@dataclass
class DraftConfig:
    method: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # target vocabulary V
    draft_vocab_size: int  # Vd: EAGLE-3 lm_head rows; equals V for EAGLE-1
    target_hidden_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    hidden_act: str = "silu"
    attention_bias: bool = False
    fc_bias: bool = False  # EAGLE-1 fc bias (the reference uses True; Llama-3 drafts False)
    aux_layer_ids: list[int] = field(default_factory=list)  # EAGLE-3 (three) and DFlash (one or more)
    num_hidden_layers: int = 1  # draft decoder layers (EAGLE: 1)
    block_size: int = 0  # DFlash: tokens per drafted block, the anchor (last accepted token) included
    mask_token_id: int | None = None  # DFlash: the token filling a block's slots after the anchor
    aux_layer_convention: str = AUX_CONVENTION
    target: TargetInfo | None = None
    format_version: int = 1
    # the tree `eaglespec tune` chose on some hardware: {"tree": {kind, depth, top_k, total_tokens}, "tuned_on": ...};
    # `generate`, `serve` and `SpeculativeGenerator.from_pretrained` use it unless a tree is given explicitly
    decoding: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target, dict):
            self.target = TargetInfo(**self.target)
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "vocab_size", "draft_vocab_size", "target_hidden_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.draft_vocab_size > self.vocab_size:
            raise ValueError(f"draft_vocab_size={self.draft_vocab_size} exceeds the target vocab_size={self.vocab_size}")
        if self.method == "eagle1" and self.draft_vocab_size != self.vocab_size:
            raise ValueError("eagle1 drafts use the target's lm_head: draft_vocab_size must equal vocab_size")
        if self.method == "eagle3" and len(self.aux_layer_ids) != EAGLE3_NUM_AUX_LAYERS:
            raise ValueError(f"eagle3 needs {EAGLE3_NUM_AUX_LAYERS} aux_layer_ids, got {self.aux_layer_ids}")
        if self.is_dflash:
            self._check_dflash()
        elif self.num_hidden_layers != 1:
            raise ValueError(f"{self.method} drafts have one decoder layer, got num_hidden_layers={self.num_hidden_layers}")
        if self.aux_layer_convention != AUX_CONVENTION:
            raise ValueError(f"aux_layer_convention: expected {AUX_CONVENTION!r}, got {self.aux_layer_convention!r}")

    def _check_dflash(self) -> None:
        if not self.aux_layer_ids or min(self.aux_layer_ids) < 1:
            raise ValueError(f"dflash needs one or more aux_layer_ids >= 1 (target layer outputs), got {self.aux_layer_ids}")
        if self.block_size < 2:
            raise ValueError(f"dflash block_size: expected at least 2 (the anchor and one drafted token), got {self.block_size}")
        if self.mask_token_id is None or not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"dflash mask_token_id: expected a token id in 0..{self.vocab_size - 1}, got {self.mask_token_id}")
        if self.draft_vocab_size != self.vocab_size:
            raise ValueError("dflash drafts score with the target's lm_head: draft_vocab_size must equal vocab_size")
        if self.hidden_size != self.target_hidden_size or self.num_hidden_layers < 1:
            raise ValueError("dflash drafts have the target's width and at least one layer")

    @property
    def is_dflash(self) -> bool:
        """A DFlash block drafter (one forward drafts a block) rather than an EAGLE head (one token per forward)."""
        return self.method == DFLASH

    @property
    def fc_in_features(self) -> int:
        """EAGLE-1: concat(embedding, target feature) = 2H; EAGLE-3: three target states = 3Ht; DFlash: one
        target state per aux layer id."""
        if self.method == "eagle1":
            return 2 * self.hidden_size
        return len(self.aux_layer_ids) * self.target_hidden_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "DraftConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "architectures"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown draft config keys {unknown}; known keys: {sorted(known)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"{source}: missing draft config keys {missing}")
        return cls(**d)

    def save(self, directory: str | Path) -> None:
        d = {"architectures": ["DFlashDraftModel" if self.is_dflash else "EagleDraftModel"], **self.to_dict()}
        (Path(directory) / "config.json").write_text(json.dumps(d, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "DraftConfig":
        path = Path(directory) / "config.json"
        d = read_json(path, f"no draft config.json (is {directory} a draft directory?)")
        if not isinstance(d, dict) or "method" not in d:
            raise ValueError(f"{path}: not an eaglespec draft config (no 'method' field); is this a target model directory?")
        return cls.from_dict(d, source=str(path))
