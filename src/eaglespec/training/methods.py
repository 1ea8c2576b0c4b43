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
from eaglespec.decoding.verify import accepted_length_on_path
from eaglespec.models.draft import EagleDraftModel
from eaglespec.training.config import SIM_TREE_STATES_PER_BATCH
from eaglespec.training.data import PAD_ID, TargetBatch
from eaglespec.training.losses import (
    DEFAULT_OBJECTIVE,
    DEFAULT_TV_WEIGHT,
    TOPK,
    eagle1_loss,
    eagle3_rows_loss,
    ttt_total_loss,
)
from eaglespec.training.noise import add_feature_noise
from eaglespec.training.ttt import chain_predictions, query_slots, shift_left, ttt_forward_at

# Simulated acceptance length: depth = the decoder's default tree depth per method (EAGLE_NOTES section 3).
SIM_DEPTH = DEFAULT_DEPTH
# Tree estimate: decoding states simulated per test batch (evenly spaced over its trainable positions;
# --sim-states, default SIM_TREE_STATES_PER_BATCH). Each costs one catch-up and one dynamic-tree build (depth - 1
# small draft forwards). The count is the same for every batch (padded with discarded repeats) because under
# ZeRO-3 every draft forward is a collective: all ranks must run the same number of them.


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to backpropagate
    sums: dict[str, torch.Tensor]  # metric name -> sum over this batch (counts included)


class TrainMethod(Protocol):
    name: str
    num_positions: int  # positions reported per epoch (EAGLE-3: TTT steps; EAGLE-1: 1)
    sim_states: int  # simulated decoding states per test batch (0: no simulated acceptance length)

    def train_step(self, model: torch.nn.Module, draft: EagleDraftModel, batch: TargetBatch) -> StepOutput: ...

    def eval_step(self, model: torch.nn.Module, draft: EagleDraftModel, batch: TargetBatch,
                  greedy: torch.Tensor | None) -> dict[str, torch.Tensor]: ...


@dataclass
class Aligned:
    """Batch shifted to draft positions (see training.data)."""

    input_ids: torch.Tensor  # [B, T] x_{t+1}
    features: torch.Tensor  # [B, T, F] f_t
    next_last_hidden: torch.Tensor  # [B, T, H] f_{t+1}
    next_logits: torch.Tensor | None  # [B, T, V] target logits at t+1 (distribution of x_{t+2}); None: lazy
    mask: torch.Tensor  # [B, T] loss_mask[t+2]
    sim_mask: torch.Tensor  # [B, T] positions where a decoding state exists: x_{t+1} is a trained token


def align(batch: TargetBatch) -> Aligned:
    return Aligned(
        input_ids=shift_left(batch.input_ids, 1, PAD_ID),
        features=batch.features,
        next_last_hidden=shift_left(batch.last_hidden, 1),
        next_logits=shift_left(batch.logits, 1) if batch.logits is not None else None,
        mask=shift_left(batch.loss_mask, 2),
        sim_mask=shift_left(batch.loss_mask, 1).bool() & shift_left(batch.valid, 1),
    )


ENGINE_CHAIN_DEPTH = 3  # llama.cpp's default --spec-draft-n-max: the chain engines draft


def simulated_acceptance(
    draft: EagleDraftModel,
    input_ids: torch.Tensor,  # [B, T] x_{t+1}
    features: torch.Tensor,  # [B, T, F] target features f_t
    greedy: torch.Tensor,  # [B, T, D] target greedy continuation after prefix x_0..x_s (row s), at sim_rows
    sim_mask: torch.Tensor,  # [B, T]
    num_states: int = SIM_TREE_STATES_PER_BATCH,
) -> dict[str, torch.Tensor]:
    """Estimates of tau as sums of 1 (bonus token) + accepted draft tokens, from `num_states` decoding
    states (draft positions where `sim_mask` holds, evenly spaced; `greedy` needs their rows, see sim_rows):

    chain: the draft rolled forward on its own greedy tokens, compared with the target's greedy
        continuation (the issue's definition; it estimates chain decoding); chain3: the same chain cut at
        ENGINE_CHAIN_DEPTH tokens, what llama.cpp's default chain (and a 3-token vLLM draft) can accept;
    tree: the decoder's own default dynamic tree (`decoding.Drafter`) built from that decoding state;
        accepted = the longest root path that spells the target's greedy continuation, exactly what greedy
        verification would accept there.
    """
    depth = greedy.shape[-1]
    target = shift_left(greedy, 1)  # draft position t continues the prefix ending at x_{t+1}
    states, real = _tree_states(sim_mask, num_states)  # padded to num_states (equal work on every rank)
    hidden = draft.project_target_features(features)
    b = torch.tensor([st[0] for st in states], dtype=torch.long, device=input_ids.device)
    t = torch.tensor([st[1] for st in states], dtype=torch.long, device=input_ids.device)
    chain = _chain_at_states(draft, input_ids, hidden, depth, b, t)  # [n, D] own greedy chain per state
    matched = (chain == target[b, t]).long().cumprod(-1)
    hits, hits3 = matched.sum(-1)[:real], matched[:, :ENGINE_CHAIN_DEPTH].sum(-1)[:real]
    accepted = simulated_tree_acceptance(draft, input_ids, features, target, states)[:real]
    return {"sim_chain_sum": (hits + 1).sum().double(), "sim_chain3_sum": (hits3 + 1).sum().double(),
            "sim_positions": torch.tensor(float(real)),
            "sim_tree_sum": torch.tensor(float(sum(1 + a for a in accepted))),
            "sim_tree_states": torch.tensor(float(real))}


def _chain_at_states(draft, input_ids, hidden, depth: int, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[n, depth] draft chain predictions from the states (b[i], t[i]): one batched rollout (the same
    number of draft forwards on every rank, whatever the states)."""
    states = list(zip(b.tolist(), t.tolist()))
    ends, _live = query_slots(states, input_ids.shape[0], input_ids.device)
    chain = chain_predictions(draft, input_ids, hidden, depth, ends)  # [B, S, depth]
    slot = {(seq, int(e)): k for seq in range(ends.shape[0]) for k, e in enumerate(ends[seq].tolist())}
    k = torch.tensor([slot[st] for st in states], dtype=torch.long, device=input_ids.device)
    return chain[b, k]


def sim_rows(batch: TargetBatch, num_states: int) -> list[tuple[int, int]]:
    """The (sequence, row) pairs whose target greedy continuation `simulated_acceptance` reads."""
    states, real = _tree_states(align(batch).sim_mask, num_states)
    return [(b, t + 1) for b, t in states[:real]]


def _tree_states(sim_mask: torch.Tensor, n: int) -> tuple[list[tuple[int, int]], int]:
    """n (sequence, position) pairs where sim_mask holds, evenly spaced, and how many are real: when the
    batch has fewer, the list is padded with repeats whose results are dropped."""
    valid = sim_mask.nonzero().tolist()  # row-major: sequence by sequence
    if not valid or n == 0:
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
        accepted.append(accepted_length_on_path(tree, target[b, t]))
    return accepted


class Eagle1Method:
    name = "eagle1"
    num_positions = 1

    def __init__(self, noise: str, noise_std: float, v_w: float, p_w: float,
                 sim_states: int = SIM_TREE_STATES_PER_BATCH):
        self.noise, self.noise_std, self.v_w, self.p_w = noise, noise_std, v_w, p_w
        self.sim_states = sim_states

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
            sums.update(simulated_acceptance(draft, a.input_ids, a.features, greedy, a.sim_mask, self.sim_states))
        return sums


def trained_rows(batch: TargetBatch, t2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, p) of the aligned positions EAGLE-3 trains at step 0: loss_mask[p + 2] is 1 and the target's
    argmax at row p + 1 (its next token) is in the draft vocabulary (`t2d`, bool over target ids)."""
    mask = shift_left(batch.loss_mask, 2).bool()
    b, p = mask.nonzero(as_tuple=True)
    in_vocab = t2d[batch.rows_argmax(b, p + 1)]
    return b[in_vocab], p[in_vocab]


def _later_step_slots(b: torch.Tensor, p: torch.Tensor, shape: torch.Size, steps: int):
    """(ends [B, S], slot_of [B, T]): per sequence the positions t that TTT steps 1.. train (t = p - j for a
    trained row p, 1 <= j < steps), ascending and padded with position 0; slot_of[b, t] = t's slot (else -1)."""
    B, T = shape
    needed = torch.zeros(B, T, dtype=torch.bool, device=p.device)
    for j in range(1, steps):
        keep = p >= j
        needed[b[keep], p[keep] - j] = True
    S = max(1, int(needed.sum(1).max()))
    arange = torch.arange(T, device=p.device).expand(B, T)
    ends = torch.where(needed, arange, T + arange).sort(dim=1).values[:, :S]  # needed positions first
    live = ends < T
    ends = ends.masked_fill(~live, 0)
    slot_of = torch.full((B, T), -1, dtype=torch.long, device=p.device)
    idx = live.nonzero()  # (sequence, slot), row-major like ends[live]
    slot_of[idx[:, 0], ends[live]] = idx[:, 1]
    return ends, slot_of


def draft_vocab_ids(draft: EagleDraftModel) -> torch.Tensor | None:
    """Target ids of the draft's lm_head rows, ascending (None: the full vocabulary, no column selection)."""
    if draft.config.draft_vocab_size == draft.config.vocab_size:
        return None
    return draft.t2d.nonzero().squeeze(-1)


class Eagle3Method:
    name = "eagle3"

    def __init__(self, ttt_length: int, step_weight: float, gradient_checkpointing: bool = False,
                 sim_states: int = SIM_TREE_STATES_PER_BATCH, objective: str = DEFAULT_OBJECTIVE,
                 tv_weight: float = DEFAULT_TV_WEIGHT):
        self.num_positions, self.step_weight = ttt_length, step_weight
        self.gradient_checkpointing, self.sim_states = gradient_checkpointing, sim_states
        self.objective, self.tv_weight = objective, tv_weight

    def _step_losses(self, model, draft: EagleDraftModel, batch: TargetBatch, a: Aligned, hidden: torch.Tensor):
        """Step j trains draft position t on target row t + 1 + j where loss_mask[t + 2 + j] holds and the
        target's token there is in the draft vocabulary. Only those rows are projected, by the draft's
        lm_head and the target's (over the draft vocabulary): the same loss as over all [B, T] positions."""
        b, p = trained_rows(batch, draft.t2d)  # aligned positions p: target row p + 1
        order = torch.argsort(p, descending=True, stable=True)  # the rows of step j are then a prefix
        b, p = b[order], p[order]
        # Steps j > 0 run only at the positions some later step trains (not at prompts, padding, ...).
        ends, slot_of = _later_step_slots(b, p, a.input_ids.shape, self.num_positions)
        outputs = ttt_forward_at(model, a.input_ids, hidden, self.num_positions, ends,
                                 gradient_checkpointing=self.gradient_checkpointing)
        target_logits = batch.rows_logits(b, p + 1, draft_vocab_ids(draft))  # [M, Vd]
        target_probs, target_top = torch.softmax(target_logits, dim=-1), target_logits.argmax(-1)
        steps = []
        for j, out in enumerate(outputs):
            n = int((p >= j).sum())  # draft position p - j of step j predicts the token of row p + 1
            t = p[:n] - j
            rows = out[b[:n], t if j == 0 else slot_of[b[:n], t]]  # [n, H]
            steps.append(eagle3_rows_loss(draft.compute_logits(rows), target_probs[:n], target_top[:n],
                                          self.objective, self.tv_weight))
        return steps

    @staticmethod
    def _sums(steps) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        for j, s in enumerate(steps):
            sums.update({f"count_{j}": s.count, f"ploss_sum_{j}": s.ploss_sum, f"correct_{j}": s.correct,
                         f"accept_sum_{j}": s.accept_sum})
        return sums

    def train_step(self, model, draft, batch: TargetBatch) -> StepOutput:
        a = align(batch)
        steps = self._step_losses(model, draft, batch, a, draft.project_target_features(a.features))
        return StepOutput(ttt_total_loss(steps, self.step_weight), self._sums(steps))

    @torch.no_grad()
    def eval_step(self, model, draft, batch: TargetBatch, greedy: torch.Tensor | None) -> dict[str, torch.Tensor]:
        a = align(batch)
        sums = self._sums(self._step_losses(model, draft, batch, a, draft.project_target_features(a.features)))
        if greedy is not None:
            sums.update(simulated_acceptance(draft, a.input_ids, a.features, greedy, a.sim_mask, self.sim_states))
        return sums
