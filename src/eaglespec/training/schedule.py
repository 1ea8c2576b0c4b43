"""AdamW with the EAGLE betas and a linear warmup then linear decay learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ADAM_BETAS = (0.9, 0.95)  # EAGLE_NOTES section 2: the reference's AdamW betas for both methods


@dataclass
class OptimizerConfig:
    lr: float
    total_steps: int  # optimizer steps over the whole run (the decay reaches 0 there)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.5  # 0 disables clipping
    clip_mode: str = "norm"  # "norm" (clip_grad_norm_) or "value" (the reference's clip_grad_value_)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps: expected >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip: expected >= 0, got {self.grad_clip}")
        if self.clip_mode not in ("norm", "value"):
            raise ValueError(f"clip_mode: expected 'norm' or 'value', got {self.clip_mode!r}")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based).

    Warmup: (step + 1) / warmup for step < warmup (the first step already moves);
    then linear decay from 1 at step = warmup to 0 at step = total_steps.
    Example (warmup 2, total 6): 0.5, 1.0, 1.0, 0.75, 0.5, 0.25.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / decay_steps)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (frozen embeddings excluded) and its warmup-decay scheduler."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=ADAM_BETAS, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.total_steps)
    )
    return optimizer, scheduler
