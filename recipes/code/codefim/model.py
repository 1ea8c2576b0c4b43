"""The code model: a plain transformers `LlamaForCausalLM` (tied embeddings, no BOS, EOS `<|endoftext|>`)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codefim.config import MAX_PARAMETERS, ModelShape

ROPE_THETA = 10_000.0  # Llama-2's; the model never sees more than seq_len positions in training


def llama_config(shape: ModelShape, vocab_size: int, seq_len: int, eos_id: int, pad_id: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=shape.hidden_size,
                       intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                       num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                       head_dim=shape.head_dim, max_position_embeddings=seq_len, rope_theta=ROPE_THETA,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id)


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (the tied embedding / lm_head once)."""
    return sum(p.numel() for p in model.parameters())


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model (seeded), refused above the issue's parameter limit."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    count = parameter_count(model)
    if count > MAX_PARAMETERS:
        raise ValueError(f"shape: {count:,} parameters > the limit {MAX_PARAMETERS:,} (hidden_size "
                         f"{config.hidden_size}, num_layers {config.num_hidden_layers}, vocab {config.vocab_size})")
    return model
