"""Greedy exactness against vanilla that understands floating-point near-ties.

In bf16/fp16 a T-token verification forward rounds differently from a one-token forward, so where the
target's two best tokens are within the dtype's resolution the argmax can flip, and the two outputs then
continue differently (both are greedy decodings of the same model up to rounding; EAGLE_NOTES section 9).
So each greedy output is classified against vanilla's:
- `exact`: token-identical;
- `near-tie`: at the first differing token, the target's logits of the two tokens, recomputed in fp32 on the
  common prefix, differ by at most NEAR_TIE_ULPS units of the run dtype's resolution at the logits' scale;
- `MISMATCH`: anything else (a real bug until shown otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

EXACT, NEAR_TIE, MISMATCH = "exact", "near-tie", "MISMATCH"
NEAR_TIE_ULPS = 4  # a 30-layer forward accumulates a few roundings of the last place at the logits' scale


def near_tie_threshold(dtype: torch.dtype, logit_scale: float) -> float:
    """Largest fp32 logit gap that rounding in `dtype` can plausibly flip, at logits of size `logit_scale`."""
    return NEAR_TIE_ULPS * torch.finfo(dtype).eps * max(1.0, abs(logit_scale))


@dataclass
class Exactness:
    status: str  # exact | near-tie | MISMATCH
    turn: int | None = None  # first turn that differs
    position: int | None = None  # index of the first differing new token in that turn
    expected: int | None = None  # vanilla's token there
    got: int | None = None  # the method's token there
    gap: float | None = None  # |fp32 logit(expected) - fp32 logit(got)|
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a prefix of the other differs at its end), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


LogitsFn = Callable[[list[int]], torch.Tensor]  # prompt + prefix ids -> fp32 logits [V] of the next token


def classify(turn_prompts: list[list[int]], vanilla_turns: list[list[int]], method_turns: list[list[int]],
             dtype: torch.dtype, fp32_next_logits: LogitsFn) -> Exactness:
    """Classify a method's greedy answer (all turns) against vanilla's. `turn_prompts[k]` is turn k's prompt
    (identical for both up to the first difference, since later turns condition on the answers)."""
    for turn, (prompt, want, got) in enumerate(zip(turn_prompts, vanilla_turns, method_turns)):
        i = first_difference(want, got)
        if i is None:
            continue
        if i >= len(want) or i >= len(got):  # one output stops where the other goes on: not a rounding flip
            return Exactness(MISMATCH, turn, i, want[i] if i < len(want) else None, got[i] if i < len(got) else None)
        logits = fp32_next_logits(prompt + want[:i])
        gap = abs(float(logits[want[i]]) - float(logits[got[i]]))
        threshold = near_tie_threshold(dtype, float(logits.max()))
        return Exactness(NEAR_TIE if gap <= threshold else MISMATCH, turn, i, want[i], got[i], gap, threshold)
    if len(method_turns) != len(vanilla_turns):
        return Exactness(MISMATCH, min(len(method_turns), len(vanilla_turns)))
    return Exactness(EXACT)


def fp32_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """`fp32_next_logits` for a Hugging Face causal LM loaded in fp32."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def next_logits(ids: list[int]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float()

    return next_logits
