"""Draft-head configuration: one typed record, validated once, saved as config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eaglespec._io import read_json

METHODS = ("eagle1", "eagle3")

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
    aux_layer_ids: list[int] = field(default_factory=list)  # EAGLE-3 only
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
        if self.aux_layer_convention != AUX_CONVENTION:
            raise ValueError(f"aux_layer_convention: expected {AUX_CONVENTION!r}, got {self.aux_layer_convention!r}")

    @property
    def fc_in_features(self) -> int:
        """EAGLE-1: concat(embedding, target feature) = 2H; EAGLE-3: three target states = 3Ht."""
        if self.method == "eagle1":
            return 2 * self.hidden_size
        return EAGLE3_NUM_AUX_LAYERS * self.target_hidden_size

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
        d = {"architectures": ["EagleDraftModel"], **self.to_dict()}
        (Path(directory) / "config.json").write_text(json.dumps(d, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "DraftConfig":
        path = Path(directory) / "config.json"
        d = read_json(path, f"no draft config.json (is {directory} a draft directory?)")
        if not isinstance(d, dict) or "method" not in d:
            raise ValueError(f"{path}: not an eaglespec draft config (no 'method' field); is this a target model directory?")
        return cls.from_dict(d, source=str(path))
