"""Logits processors shared by vanilla and speculative decoding (temperature -> top-k -> top-p, as in HF).

Speculative sampling is lossless only if the target distribution it reproduces is the processed one, so the
acceptance walk, the residual and the bonus token all go through `target_probs` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy (top_p / top_k are then ignored, as `do_sample=False` in HF)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """logits [..., V] -> processed probabilities [..., V] (float32): softmax(top_p(top_k(logits / T)))."""
    logits = logits.float() / config.temperature
    V = logits.shape[-1]
    if 0 < config.top_k < V:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1:
        probs = _top_p_filter(probs, config.top_p)
    return probs


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one), renormalised.

    Worked example: probs (0.5, 0.3, 0.2), top_p 0.7 -> mass before each sorted token (0, 0.5, 0.8):
    tokens whose preceding mass is < 0.7 are kept -> (0.5, 0.3) -> renormalised (0.625, 0.375).
    """
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep_sorted = mass_before < top_p  # the first token always has mass_before 0 < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(dim=-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """probs [..., V] -> token ids [...] (one draw per row)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., V] -> argmax [...], the first index on ties (as `argmax`). `max(dim).indices` is the same
    token, and on CPU in bf16 it is 3x faster than `argmax` (measured: 16 x 49152 logits, 1.5 vs 4.5 ms)."""
    return logits.max(dim=-1).indices


def next_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits [..., V] -> the next token [...]: argmax when greedy, else a draw from the processed distribution."""
    if config.greedy:
        return greedy_token(logits)
    return sample(target_probs(logits, config), generator)
