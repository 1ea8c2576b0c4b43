"""Training losses of both draft methods, all normalised by the number of trained positions.

Every function returns sums and counts as well as the normalised loss, so metrics can be
aggregated exactly over batches (and ranks) instead of averaging per-batch averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TOPK = (1, 2, 3)  # EAGLE-1 accuracies reported (target argmax within the draft's top-k)
# EAGLE-3's --objective, per trained position, with p the target's distribution and q the draft's (over the draft
# vocabulary) and alpha = sum_x min(p(x), q(x)), the chance speculative sampling accepts a drafted token:
# ce: soft cross-entropy -sum p log q (EAGLE's); tv: 1 - alpha (total variation: exactly one minus the acceptance
# rate); lk: -log alpha (LK losses' negative log-acceptance, arXiv 2602.23881: TV's gradient scaled by 1 / alpha,
# which keeps it from vanishing where the draft starts far off); ce+tv: ce + tv_weight * (1 - alpha).
OBJECTIVES = ("ce", "tv", "lk", "ce+tv")
# DFlash's --objective adds label: hard cross-entropy on the data's own next token, as z-lab's and SpecForge's DFlash
# train (on self-distilled data that token is the target's greedy one). It needs no target logits in training steps,
# which on a CPU are most of a step's cost (a [rows, vocab] matmul, its softmax and argmax).
LABEL_OBJECTIVE = "label"
BLOCK_OBJECTIVES = OBJECTIVES + (LABEL_OBJECTIVE,)
DEFAULT_OBJECTIVE = "ce"
DEFAULT_TV_WEIGHT = 1.0
MIN_ALPHA = 1e-6  # lk: alpha is floored here (a draft with no mass on p's support would give log 0)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """[..., V] logits and [..., V] target distribution -> [...] cross-entropy -sum p log q (fp32)."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def acceptance_rate(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """[..., V] draft logits and target distribution -> [...] sum_x min(p(x), softmax(logits)(x)) (fp32)."""
    return torch.minimum(target_probs, torch.softmax(logits.float(), dim=-1)).sum(-1)


def objective_loss(logits: torch.Tensor, target_probs: torch.Tensor, objective: str = DEFAULT_OBJECTIVE,
                   tv_weight: float = DEFAULT_TV_WEIGHT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., V] -> ([...] the objective, [...] soft CE, [...] alpha) per position (see OBJECTIVES)."""
    ce, alpha = soft_cross_entropy(logits, target_probs), acceptance_rate(logits, target_probs)
    if objective == "ce":
        return ce, ce, alpha
    if objective == "tv":
        return 1 - alpha, ce, alpha
    if objective == "lk":
        return -torch.log(alpha.clamp(min=MIN_ALPHA)), ce, alpha
    if objective == "ce+tv":
        return ce + tv_weight * (1 - alpha), ce, alpha
    raise ValueError(f"--objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")


@dataclass
class Eagle1Loss:
    loss: torch.Tensor  # scalar: v_w * vloss + p_w * ploss
    vloss: torch.Tensor  # scalar: SmoothL1 per position (mean over H), summed over masked / count
    ploss: torch.Tensor  # scalar: soft CE summed over masked / count
    count: torch.Tensor  # scalar: number of trained positions
    vloss_sum: torch.Tensor
    ploss_sum: torch.Tensor
    correct: torch.Tensor  # [len(TOPK)]: positions whose target argmax is in the draft's top-k


def eagle1_loss(
    predicted: torch.Tensor,  # [B, T, H] draft output (predicted next feature)
    target_features: torch.Tensor,  # [B, T, H] true next feature f_{t+1}
    draft_logits: torch.Tensor,  # [B, T, V] target lm_head(predicted)
    target_logits: torch.Tensor,  # [B, T, V] target lm_head(f_{t+1})
    mask: torch.Tensor,  # [B, T] 1 = trained position
    v_w: float,
    p_w: float,
) -> Eagle1Loss:
    """EAGLE_NOTES section 2: v_w * SmoothL1(f^, f) + p_w * soft-CE(q, softmax(lm_head(f))), / mask count."""
    m = mask.float()
    count = m.sum()
    denom = count.clamp(min=1.0)
    per_pos_v = F.smooth_l1_loss(predicted.float(), target_features.float(), reduction="none").mean(-1)  # [B, T]
    target_probs = torch.softmax(target_logits.float(), dim=-1)
    per_pos_p = soft_cross_entropy(draft_logits, target_probs)  # [B, T]
    vloss_sum = (per_pos_v * m).sum()
    ploss_sum = (per_pos_p * m).sum()
    vloss, ploss = vloss_sum / denom, ploss_sum / denom
    with torch.no_grad():
        target_top1 = target_logits.argmax(-1, keepdim=True)  # [B, T, 1]
        K = min(max(TOPK), draft_logits.shape[-1])
        topk = draft_logits.topk(K, dim=-1).indices  # [B, T, K]
        hits = (topk == target_top1).cumsum(-1).clamp(max=1)  # [B, T, K]: 1 once the target token was seen
        correct = torch.stack([(hits[..., min(k, K) - 1].float() * m).sum() for k in TOPK])
    return Eagle1Loss(v_w * vloss + p_w * ploss, vloss, ploss, count, vloss_sum.detach(), ploss_sum.detach(), correct)


@dataclass
class StepLoss:
    """One training-time-test step of EAGLE-3."""

    ploss: torch.Tensor  # scalar: the objective summed over masked positions / count (soft CE by default)
    count: torch.Tensor  # scalar: trained positions of this step
    ploss_sum: torch.Tensor  # soft CE, whatever the objective (so runs of different objectives compare)
    correct: torch.Tensor  # scalar: masked positions where draft argmax == target argmax
    accept_sum: torch.Tensor | None = None  # sum of alpha (the expected acceptance of speculative sampling)


def eagle3_step_loss(
    draft_logits: torch.Tensor,  # [B, T, Vd]
    target_logits_draft_vocab: torch.Tensor,  # [B, T, Vd]: target logits restricted to the draft vocabulary (t2d)
    mask: torch.Tensor,  # [B, T]: loss mask AND target argmax is in the draft vocabulary
) -> StepLoss:
    """Soft CE against softmax(target logits over the draft vocab), normalised by the mask count."""
    m = mask.float()
    count = m.sum()
    target_probs = torch.softmax(target_logits_draft_vocab.float(), dim=-1)
    per_pos = soft_cross_entropy(draft_logits, target_probs)  # [B, T]
    ploss_sum = (per_pos * m).sum()
    with torch.no_grad():
        hit = (draft_logits.argmax(-1) == target_logits_draft_vocab.argmax(-1)).float()
        correct = (hit * m).sum()
    return StepLoss(ploss_sum / count.clamp(min=1.0), count, ploss_sum.detach(), correct)


def eagle3_rows_loss(
    draft_logits: torch.Tensor,  # [M, Vd] at trained rows only
    target_probs: torch.Tensor,  # [M, Vd] fp32 softmax of the target logits over the draft vocabulary
    target_top: torch.Tensor,  # [M] argmax of those target logits
    objective: str = DEFAULT_OBJECTIVE,
    tv_weight: float = DEFAULT_TV_WEIGHT,
) -> StepLoss:
    """eagle3_step_loss when every row is trained, with the target's softmax and argmax computed once for all
    TTT steps (the [M, Vd] passes cost as much as a matmul on a CPU), for any of OBJECTIVES."""
    logits = draft_logits.float()  # the fp32 copy also makes argmax fast (bf16 argmax is slow on CPUs)
    count = torch.tensor(float(logits.shape[0]), device=logits.device)
    loss, ce, alpha = objective_loss(logits, target_probs, objective, tv_weight)
    with torch.no_grad():
        correct = (logits.argmax(-1) == target_top).sum().float()
    return StepLoss(loss.sum() / count.clamp(min=1.0), count, ce.sum().detach(), correct, alpha.sum().detach())


def ttt_total_loss(steps: list[StepLoss], step_weight: float) -> torch.Tensor:
    """sum_j step_weight^j * ploss_j (EAGLE_NOTES section 4; the reference uses 0.8)."""
    return sum(step_weight**j * s.ploss for j, s in enumerate(steps))
