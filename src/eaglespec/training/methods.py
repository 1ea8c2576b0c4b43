"""The method-specific part of training: one step's loss and metrics for EAGLE-1 and EAGLE-3.

Both methods share the alignment of `training.data` (draft position t: token x_{t+1}, feature f_t,
target row t+1, trained iff loss_mask[t+2]) and report sums keyed by metric name, which
`training.metrics.MetricSums` turns into per-epoch averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.tree import DEFAULT_DEPTH, TreeConfig, dynamic_capacity
from eaglespec.models.draft import EagleDraftModel
from eaglespec.training.data import PAD_ID, TargetBatch
from eaglespec.training.losses import TOPK, eagle1_loss, eagle3_step_loss, ttt_total_loss
from eaglespec.training.noise import add_feature_noise
from eaglespec.training.ttt import chain_predictions, shift_left, ttt_forward

# Simulated acceptance length: depth = the decoder's default tree depth per method (EAGLE_NOTES section 3).
SIM_DEPTH = DEFAULT_DEPTH
# Tree estimate: decoding states simulated per test batch (evenly spaced over its trainable positions).
# Each costs one catch-up and one dynamic-tree build (depth - 1 small draft forwards). The count is the same
# for every batch (padded with discarded repeats) because under ZeRO-3 every draft forward is a collective:
# all ranks must run the same number of them.
SIM_TREE_STATES_PER_BATCH = 32


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to backpropagate
    sums: dict[str, torch.Tensor]  # metric name -> sum over this batch (counts included)


class TrainMethod(Protocol):
    name: str
    num_positions: int  # positions reported per epoch (EAGLE-3: TTT steps; EAGLE-1: 1)

    def train_step(self, model: torch.nn.Module, draft: EagleDraftModel, batch: TargetBatch) -> StepOutput: ...

    def eval_step(self, model: torch.nn.Module, draft: EagleDraftModel, batch: TargetBatch,
                  greedy: torch.Tensor | None) -> dict[str, torch.Tensor]: ...


@dataclass
class Aligned:
    """Batch shifted to draft positions (see training.data)."""

    input_ids: torch.Tensor  # [B, T] x_{t+1}
    features: torch.Tensor  # [B, T, F] f_t
    next_last_hidden: torch.Tensor  # [B, T, H] f_{t+1}
    next_logits: torch.Tensor  # [B, T, V] target logits at t+1 (distribution of x_{t+2})
    mask: torch.Tensor  # [B, T] loss_mask[t+2]
    sim_mask: torch.Tensor  # [B, T] positions where a decoding state exists: x_{t+1} is a trained token


def align(batch: TargetBatch) -> Aligned:
    return Aligned(
        input_ids=shift_left(batch.input_ids, 1, PAD_ID),
        features=batch.features,
        next_last_hidden=shift_left(batch.last_hidden, 1),
        next_logits=shift_left(batch.logits, 1),
        mask=shift_left(batch.loss_mask, 2),
        sim_mask=shift_left(batch.loss_mask, 1).bool() & shift_left(batch.valid, 1),
    )


def simulated_acceptance(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] x_{t+1}
    features: torch.Tensor,  # [B, T, F] target features f_t
    greedy: torch.Tensor,  # [B, T, D] target greedy continuation after prefix x_0..x_s (row s)
    sim_mask: torch.Tensor,  # [B, T]
) -> dict[str, torch.Tensor]:
    """Estimates of tau as sums of 1 (bonus token) + accepted draft tokens:

    chain (every `sim_mask` position): the draft rolled forward on its own greedy tokens, compared with
        the target's greedy continuation (the issue's definition; it estimates chain decoding);
    tree (SIM_TREE_STATES_PER_BATCH positions per batch): the decoder's own default dynamic tree
        (`decoding.Drafter`) built from that decoding state; accepted = the longest root path that
        spells the target's greedy continuation, exactly what greedy verification would accept there.
    """
    depth = greedy.shape[-1]
    target = shift_left(greedy, 1)  # draft position t continues the prefix ending at x_{t+1}
    hidden = draft.project_target_features(features)
    chain = (chain_predictions(draft, input_ids, hidden, depth) == target).long().cumprod(-1).sum(-1)  # [B, T]
    m = sim_mask.float()
    states, real = _tree_states(sim_mask)
    accepted = simulated_tree_acceptance(draft, input_ids, features, target, states)[:real]
    return {"sim_chain_sum": ((chain + 1).float() * m).sum(), "sim_positions": m.sum(),
            "sim_tree_sum": torch.tensor(float(sum(1 + a for a in accepted))),
            "sim_tree_states": torch.tensor(float(len(accepted)))}


def _tree_states(sim_mask: torch.Tensor) -> tuple[list[tuple[int, int]], int]:
    """SIM_TREE_STATES_PER_BATCH (sequence, position) pairs where sim_mask holds, evenly spaced, and how
    many are real: when the batch has fewer, the list is padded with repeats whose results are dropped."""
    valid = sim_mask.nonzero().tolist()  # row-major: sequence by sequence
    n = SIM_TREE_STATES_PER_BATCH
    if not valid:
        return [(0, 0)] * n, 0
    real = min(n, len(valid))
    pick = torch.linspace(0, len(valid) - 1, real).round().long().tolist()
    states = [tuple(valid[i]) for i in pick]
    return states + [states[0]] * (n - real), real


@torch.no_grad()
def simulated_tree_acceptance(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] x_{t+1}
    features: torch.Tensor,  # [B, T, F] target features f_t
    target: torch.Tensor,  # [B, T, D] target greedy tokens after x_{t+1}
    states: list[tuple[int, int]],  # (sequence b, draft position t) to simulate
) -> list[int]:
    """Accepted draft tokens from each decoding state, with the default dynamic tree of the decoder.

    The state at draft position t is the one `SpeculativeGenerator` is in with t + 1 tokens in the target
    cache and root x_{t+1}: the draft has caught up on x_1..x_{t+1} with the target's features f_0..f_t.
    """
    # The decoder's default tree; with a tiny draft vocabulary (top_k clamped to it) the tree holds fewer nodes.
    tree = TreeConfig()
    top_k = min(tree.top_k, draft.config.draft_vocab_size)
    depth = tree.resolved_depth(draft.config.method)
    tree = TreeConfig(total_tokens=min(tree.total_tokens, dynamic_capacity(top_k, depth) + 1))
    drafter = Drafter(draft, tree)
    accepted = []
    for b, t in states:
        drafter.reset()
        drafter.catch_up(input_ids[b:b + 1, : t + 1], features[b:b + 1, : t + 1])
        tree = drafter.propose(int(input_ids[b, t]), max_depth=target.shape[-1])
        accepted.append(_accepted_depth(tree, target[b, t]))
    return accepted


def _accepted_depth(tree, path: torch.Tensor) -> int:
    """Depth of the deepest tree node whose root path spells `path` [D] (greedy verification's accept length)."""
    depths = tree.depths
    expected = path[(depths - 1).clamp(min=0, max=path.numel() - 1)].to(tree.tokens.device)
    matches = (tree.tokens == expected) | (depths == 0)
    on_path = (matches[None, :] | ~tree.mask).all(dim=-1)  # every node on the root path matches
    return int(depths[on_path].max())


class Eagle1Method:
    name = "eagle1"
    num_positions = 1

    def __init__(self, noise: str, noise_std: float, v_w: float, p_w: float):
        self.noise, self.noise_std, self.v_w, self.p_w = noise, noise_std, v_w, p_w

    def _losses(self, model, draft, a: Aligned, features: torch.Tensor):
        predicted = model(a.input_ids, features)
        logits = draft.compute_logits(predicted)
        return eagle1_loss(predicted, a.next_last_hidden, logits, a.next_logits, a.mask, self.v_w, self.p_w)

    def train_step(self, model, draft, batch: TargetBatch) -> StepOutput:
        a = align(batch)
        out = self._losses(model, draft, a, add_feature_noise(a.features, self.noise, self.noise_std))
        return StepOutput(out.loss, self._sums(out))

    @staticmethod
    def _sums(out) -> dict[str, torch.Tensor]:
        sums = {"count_0": out.count, "vloss_sum": out.vloss_sum, "ploss_sum_0": out.ploss_sum}
        sums.update({f"top{k}_correct": out.correct[i] for i, k in enumerate(TOPK)})
        sums["correct_0"] = out.correct[0]
        return sums

    @torch.no_grad()
    def eval_step(self, model, draft, batch: TargetBatch, greedy: torch.Tensor | None) -> dict[str, torch.Tensor]:
        a = align(batch)
        sums = self._sums(self._losses(model, draft, a, a.features))
        if greedy is not None:
            sums.update(simulated_acceptance(draft, a.input_ids, a.features, greedy, a.sim_mask))
        return sums


class Eagle3Method:
    name = "eagle3"

    def __init__(self, ttt_length: int, step_weight: float, gradient_checkpointing: bool = False):
        self.num_positions, self.step_weight = ttt_length, step_weight
        self.gradient_checkpointing = gradient_checkpointing

    def _step_losses(self, model, draft: EagleDraftModel, a: Aligned, hidden: torch.Tensor):
        outputs = ttt_forward(model, a.input_ids, hidden, self.num_positions,
                              gradient_checkpointing=self.gradient_checkpointing)
        t2d = draft.t2d
        in_vocab = t2d[a.next_logits.argmax(-1)]  # [B, T]: target's next token is in the draft vocabulary
        mask = a.mask.bool() & in_vocab
        target_logits = a.next_logits[..., t2d]  # [B, T, Vd] (t2d is ascending, as the lm_head rows)
        steps = []
        for j, out in enumerate(outputs):
            steps.append(eagle3_step_loss(draft.compute_logits(out), shift_left(target_logits, j), shift_left(mask, j)))
        return steps

    @staticmethod
    def _sums(steps) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        for j, s in enumerate(steps):
            sums.update({f"count_{j}": s.count, f"ploss_sum_{j}": s.ploss_sum, f"correct_{j}": s.correct})
        return sums

    def train_step(self, model, draft, batch: TargetBatch) -> StepOutput:
        a = align(batch)
        steps = self._step_losses(model, draft, a, draft.project_target_features(a.features))
        return StepOutput(ttt_total_loss(steps, self.step_weight), self._sums(steps))

    @torch.no_grad()
    def eval_step(self, model, draft, batch: TargetBatch, greedy: torch.Tensor | None) -> dict[str, torch.Tensor]:
        a = align(batch)
        sums = self._sums(self._step_losses(model, draft, a, draft.project_target_features(a.features)))
        if greedy is not None:
            sums.update(simulated_acceptance(draft, a.input_ids, a.features, greedy, a.sim_mask))
        return sums
