"""Tiny random target models built from configs (no hub), one per supported architecture family.

Every fixture has 8 layers so the EAGLE-3 default aux ids [2, L//2, L-3] = [2, 4, 5] are distinct,
hidden size 32-64, and a small vocabulary. Sliding windows are larger than any test sequence.
"""

from __future__ import annotations

import functools

import torch

from eaglespec.models import bundled_model_path

VOCAB = 128
LAYERS = 8
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def _configs() -> dict[str, tuple[str, dict]]:
    base = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **COMMON)
    return {
        "llama": ("LlamaConfig", dict(base)),
        "mistral": ("MistralConfig", dict(base, sliding_window=4096)),
        "qwen2": ("Qwen2Config", dict(base)),
        "qwen3": ("Qwen3Config", dict(base, head_dim=16)),
        "gemma2": ("Gemma2Config", dict(base, head_dim=8, sliding_window=4096, hidden_activation="gelu_pytorch_tanh")),
        "gemma3": ("Gemma3TextConfig", dict(base, head_dim=8, sliding_window=4096)),
        "phi3": ("Phi3Config", dict(base, hidden_size=48, num_attention_heads=4, num_key_value_heads=4)),
        "mixtral": ("MixtralConfig", dict(base, num_local_experts=4, num_experts_per_tok=2)),
        "qwen3_moe": ("Qwen3MoeConfig", dict(base, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=32, decoder_sparse_step=1)),
    }


ARCHITECTURES = tuple(_configs())
ARCH_SEEDS = ARCHITECTURES


@functools.lru_cache(maxsize=None)
def _tiny_model_state(arch: str) -> tuple[str, dict, dict]:
    import transformers

    cls_name, kwargs = _configs()[arch]
    config = getattr(transformers, cls_name)(**kwargs)
    config._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    torch.manual_seed(1234 + ARCH_SEEDS.index(arch))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; sharpen them so greedy/tree tests are not all ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return cls_name, kwargs, {k: v.clone() for k, v in model.state_dict().items()}


def tiny_model(arch: str):
    """A fresh float32 eval-mode tiny model of `arch` (weights identical across calls)."""
    import transformers

    cls_name, kwargs, state = _tiny_model_state(arch)
    config = getattr(transformers, cls_name)(**kwargs)
    config._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state)
    return model.eval()


def stories260k():
    """The bundled stories260K target (float32, eval)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(bundled_model_path()), dtype=torch.float32).eval()


def stories260k_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path()))


# ---------------------------------------------------------------------------------------------------
# Training tests: a small run config on stories260K, its metrics, dumped features
# ---------------------------------------------------------------------------------------------------

def train_config(out, **kw):
    """CommonTrainConfig of a short stories260K run into `out` (keyword arguments override)."""
    from eaglespec.training import CommonTrainConfig

    args = dict(basepath="stories260K", output_dir=out, lr=1e-3, batch_size=2, num_epochs=2, grad_accum=1,
                max_len=512, warmup_steps=2, test_split=0.2, progress=False)
    args.update(kw)
    return CommonTrainConfig(**args)


def read_metrics(out) -> list[dict]:
    import json
    from pathlib import Path

    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def dump_stories260k_features(prepared, method: str, out):
    """fp32 features of stories260K over a prepared dataset, for offline training of `method`."""
    from eaglespec.distill.features import dump_features
    from eaglespec.models import TargetModel

    dump_features(TargetModel.from_pretrained(bundled_model_path()), prepared, method, out, dtype=torch.float32)
    return out
