"""Training-time test (TTT): unroll the draft over several steps in ONE pass over a sequence.

At decoding time the draft runs as a chain: step 0 at position t sees the target features of
positions 0..t (its KV cache); step j > 0 feeds its own previous output back in at position t + j.
TTT reproduces exactly that for every position t at once (EAGLE_NOTES section 4):

- step 0: token x_{t+1}, hidden = projected target feature f_t, RoPE position t, causal attention;
- step j: token of step 0 shifted left by j (x_{t+1+j}), hidden = step j-1 output at t,
  RoPE position t + j, attention over step-0 keys 0..t plus, for each step 1 <= i <= j, the
  key of step i at the SAME position t (the diagonal), which is what the chain at position t sees.

Worked mask for T = 3, step 2 (rows = queries t, columns = step-0 keys | step-1 keys | step-2 keys):
    t=0: 1 0 0 | 1 0 0 | 1 0 0
    t=1: 1 1 0 | 0 1 0 | 0 1 0
    t=2: 1 1 1 | 0 0 1 | 0 0 1

The keys of all earlier steps are kept as concatenated tensors and handed to the draft's own
forward through a one-step cache view, so TTT runs the very code that decoding runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from eaglespec.models.draft import EagleDraftModel


def shift_left(x: torch.Tensor, n: int, fill: float | int = 0) -> torch.Tensor:
    """Shift along dim 1 by n: out[:, t] = x[:, t + n], the last n slots filled with `fill`."""
    if n == 0:
        return x
    pad = torch.full_like(x[:, :n], fill)
    return torch.cat((x[:, n:], pad), dim=1)


def ttt_attention_mask(T: int, step: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [1, 1, T, T * (step + 1)] for the queries of TTT step `step` (see the module docstring)."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=device)
    return torch.cat([causal] + [diagonal] * step, dim=-1)[None, None]


class _StepKV:
    """A one-step view of the keys/values of earlier TTT steps, with the slice of the transformers
    Cache API the draft attention uses (`update`, `get_seq_length`). It never mutates the earlier
    keys, so a step can be recomputed under gradient checkpointing."""

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None):
        self.keys, self.values = keys, values  # [B, kv, S, hd] or None before step 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int = 0):
        if self.keys is not None:
            keys, values = torch.cat((self.keys, keys), dim=-2), torch.cat((self.values, values), dim=-2)
        self.keys, self.values = keys, values
        return keys, values


def _draft_step(draft, input_ids, hidden, position_ids, mask, keys, values):
    kv = _StepKV(keys, values)
    out = draft(input_ids, hidden, position_ids=position_ids, attention_mask=mask, cache=kv)
    return out, kv.keys, kv.values


def rollout(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] step-0 tokens (x_{t+1} at position t)
    hidden: torch.Tensor,  # [B, T, H] step-0 hidden (projected target features f_t)
    num_steps: int,
    next_input_ids: Callable[[int, torch.Tensor], torch.Tensor],  # (step j, previous output) -> [B, T]
    position_ids: torch.Tensor | None = None,  # [B, T]; default arange(T)
    gradient_checkpointing: bool = False,
) -> list[torch.Tensor]:
    """Run `num_steps` chained draft steps at every position; returns each step's output [B, T, H]."""
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
    keys = values = None
    outputs: list[torch.Tensor] = []
    ids = input_ids
    for j in range(num_steps):
        if j > 0:
            ids, hidden = next_input_ids(j, outputs[-1]), outputs[-1]
        mask = ttt_attention_mask(T, j, input_ids.device)
        out, keys, values = _run_step((draft, ids, hidden, position_ids + j, mask, keys, values), gradient_checkpointing)
        outputs.append(out)
    return outputs


def _run_step(args: tuple, gradient_checkpointing: bool):
    if gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(_draft_step, *args, use_reentrant=False)
    return _draft_step(*args)


def ttt_forward_at(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] x_{t+1} at position t
    hidden: torch.Tensor,  # [B, T, H]
    num_steps: int,
    ends: torch.Tensor,  # [B, S] the positions steps j > 0 are needed at
    gradient_checkpointing: bool = False,
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """ttt_forward with steps j > 0 only at the positions `ends` (those a loss reads): step 0 runs at every
    position (its keys are every step's context) -> [B, T, H]; step j -> [B, S, H], equal to ttt_forward's
    step j at those positions (each query sees step-0 keys 0..t and its own earlier steps)."""
    B, T = input_ids.shape
    device = input_ids.device
    positions = torch.arange(T, device=device)[None].expand(B, T)
    step0 = (draft, input_ids, hidden, positions, ttt_attention_mask(T, 0, device), None, None)
    out, keys, values = _run_step(step0, gradient_checkpointing)
    outputs = [out]
    prev = out.gather(1, ends[..., None].expand(-1, -1, out.shape[-1]))  # [B, S, H]
    seen = torch.arange(T, device=device)[None, None, :] <= ends[:, :, None]  # [B, S, T]
    own = torch.eye(ends.shape[1], dtype=torch.bool, device=device).expand(B, -1, -1)
    for j in range(1, num_steps):
        ids = shift_left(input_ids, j, pad_id).gather(1, ends)
        mask = torch.cat([seen] + [own] * j, dim=-1)[:, None]  # [B, 1, S, T + S * j]
        prev, keys, values = _run_step((draft, ids, prev, ends + j, mask, keys, values), gradient_checkpointing)
        outputs.append(prev)
    return outputs


def ttt_forward(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] x_{t+1} at position t
    hidden: torch.Tensor,  # [B, T, H]
    num_steps: int,
    position_ids: torch.Tensor | None = None,
    gradient_checkpointing: bool = False,
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """Training-time test: step j is fed the data tokens shifted left by j (teacher forcing of ids)."""
    return rollout(
        draft, input_ids, hidden, num_steps,
        lambda j, _prev: shift_left(input_ids, j, pad_id),
        position_ids, gradient_checkpointing,
    )


@torch.no_grad()
def chain_predictions(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T]
    hidden: torch.Tensor,  # [B, T, H]
    num_steps: int,
    ends: torch.Tensor | None = None,  # [B, S] draft positions to roll out from; None: every position
) -> torch.Tensor:
    """Greedy draft chain from every position (or from `ends` only): [B, T or S, num_steps] target-vocabulary
    ids, step j fed the step j-1 prediction (as decoding does), not the data. Step 0 runs over the whole
    sequence (its keys are the context of every later step); later steps only at the chosen positions, each
    seeing step-0 keys 0..t and its own earlier steps (the training-time-test pattern)."""
    B, T = input_ids.shape
    device = input_ids.device
    positions = torch.arange(T, device=device)[None].expand(B, T)
    ends = positions if ends is None else ends
    kv = _StepKV(None, None)
    out = draft(input_ids, hidden, position_ids=positions, attention_mask=ttt_attention_mask(T, 0, device), cache=kv)
    prev = out.gather(1, ends[..., None].expand(-1, -1, out.shape[-1]))  # [B, S, H]
    seen = torch.arange(T, device=device)[None, None, :] <= ends[:, :, None]  # [B, S, T]
    own = torch.eye(ends.shape[1], dtype=torch.bool, device=device).expand(B, -1, -1)
    predicted: list[torch.Tensor] = []
    for j in range(1, num_steps + 1):
        predicted.append(draft.draft_to_target_ids(draft.compute_logits(prev).argmax(-1)))  # [B, S]
        if j < num_steps:
            mask = torch.cat([seen] + [own] * j, dim=-1)[:, None]  # [B, 1, S, T + S * j]
            prev = draft(predicted[-1], prev, position_ids=ends + j, attention_mask=mask, cache=kv)
    return torch.stack(predicted, dim=-1)


def query_slots(rows: list[tuple[int, int]], B: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ends [B, S], live [B, S]): the distinct positions wanted per sequence (sorted), padded with unused
    slots at position 0 to the longest list."""
    per_seq = [sorted({s for b, s in rows if b == seq}) for seq in range(B)]
    S = max(1, max(len(r) for r in per_seq))
    ends = torch.zeros(B, S, dtype=torch.long)
    live = torch.zeros(B, S, dtype=torch.bool)
    for b, r in enumerate(per_seq):
        ends[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        live[b, : len(r)] = True
    return ends.to(device), live.to(device)
