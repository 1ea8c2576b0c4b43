"""Greedy exactness against vanilla that understands floating-point near-ties.

In bf16/fp16 a T-token verification forward rounds differently from a one-token forward, so where the
target's two best tokens are within the dtype's resolution the argmax can flip, and the two outputs then
continue differently (both are greedy decodings of the same model up to rounding; EAGLE_NOTES section 9).
So each greedy output is classified against vanilla's:
- `exact`: token-identical;
- `near-tie`: at the first differing token, the target's logits of the two tokens, recomputed on the common
  prefix, differ by at most NEAR_TIE_ULPS units of the run dtype's resolution at the logits' scale: in fp32, or
  else in the run dtype itself. The second test is needed because a bf16 forward drifts from fp32 by more than
  its last place over a long context: on SmolLM2-135M at 334 tokens, two tokens 0.62 apart in fp32 were 0.25
  apart in a bf16 forward over the prefix, 0.06 on vanilla's one-token path and tied (argmax flipped) under a
  12-token verification forward; a wrong token is far from the argmax in both dtypes;
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
    threshold: float | None = None  # what the deciding gap (run_gap when there is one, else gap) was held to
    run_gap: float | None = None  # the same gap in the run dtype, computed when the fp32 one exceeds the threshold

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a prefix of the other differs at its end), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


LogitsFn = Callable[[list[int]], torch.Tensor]  # prompt + prefix ids -> logits [V] of the next token (as fp32)


def _gap(logits: torch.Tensor, a: int, b: int) -> float:
    return abs(float(logits[a]) - float(logits[b]))


def classify(turn_prompts: list[list[int]], vanilla_turns: list[list[int]], method_turns: list[list[int]],
             dtype: torch.dtype, fp32_next_logits: LogitsFn, run_next_logits: LogitsFn | None = None) -> Exactness:
    """Classify a method's greedy answer (all turns) against vanilla's. `turn_prompts[k]` is turn k's prompt
    (identical for both up to the first difference, since later turns condition on the answers)."""
    for turn, (prompt, want, got) in enumerate(zip(turn_prompts, vanilla_turns, method_turns)):
        i = first_difference(want, got)
        if i is None:
            continue
        if i >= len(want) or i >= len(got):  # one output stops where the other goes on: not a rounding flip
            return Exactness(MISMATCH, turn, i, want[i] if i < len(want) else None, got[i] if i < len(got) else None)
        logits = fp32_next_logits(prompt + want[:i])
        gap, threshold = _gap(logits, want[i], got[i]), near_tie_threshold(dtype, float(logits.max()))
        if gap <= threshold or run_next_logits is None or dtype == torch.float32:
            return Exactness(NEAR_TIE if gap <= threshold else MISMATCH, turn, i, want[i], got[i], gap, threshold)
        run = run_next_logits(prompt + want[:i])
        run_gap, run_threshold = _gap(run, want[i], got[i]), near_tie_threshold(dtype, float(run.max()))
        return Exactness(NEAR_TIE if run_gap <= run_threshold else MISMATCH, turn, i, want[i], got[i], gap,
                         run_threshold, run_gap)
    if len(method_turns) != len(vanilla_turns):
        return Exactness(MISMATCH, min(len(method_turns), len(vanilla_turns)))
    return Exactness(EXACT)


def next_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Next-token logits (as fp32) of a Hugging Face causal LM in its own dtype, one forward over the ids."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def next_logits(ids: list[int]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float()

    return next_logits
