"""DFlash training (issue 36): many anchored blocks of a sequence in ONE draft forward, position-decayed loss.

For each sequence, up to `num_anchors` anchors a are drawn among the positions whose next token is trained
(loss_mask[a + 1]); the block of anchor a is [x_a, MASK, ...] at positions a..a + bs - 1, sees the target's
features at positions < a and its own slots (`models.dflash.block_attention_mask`), and slot k is trained on the
target's distribution of the token at a + k (target row a + k - 1) where loss_mask[a + k] holds, with weight
exp(-(k - 1) / gamma): the first drafted tokens matter most, since a chain is accepted up to its first miss.
The loss is the weighted mean of the objective (soft cross-entropy by default, as EAGLE-3's `--objective`, or
`label`: hard cross-entropy on the data's token at a + k, z-lab's loss, which needs no target logits to train).

Reported per slot as EAGLE-3 reports TTT steps (`count_j`, `ploss_sum_j`, `correct_j`, `accept_sum_j` for slot
j + 1) and the chain the block would get accepted (`sim_chain_sum`): from each anchor, the leading slots whose
argmax is the target's argmax, counted while the sequence itself follows the target's argmax (exact on greedy
self-distilled data, a lower bound elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eaglespec.models.config import DFLASH
from eaglespec.models.dflash import DFlashDraftModel, block_attention_mask
from eaglespec.training.config import DFLASH_NUM_ANCHORS
from eaglespec.training.data import TargetBatch
from eaglespec.training.losses import DEFAULT_OBJECTIVE, DEFAULT_TV_WEIGHT, LABEL_OBJECTIVE, objective_loss
from eaglespec.training.methods import ENGINE_CHAIN_DEPTH, StepOutput



def default_gamma(block_size: int) -> float:
    """The loss decay: 7 for blocks of 16 and 4 for 8, as SpecForge's and speculators' recipes; half the block
    otherwise."""
    return {16: 7.0, 8: 4.0}.get(block_size, block_size / 2)


def sample_anchors(loss_mask: torch.Tensor, valid: torch.Tensor, num_anchors: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, N] anchors ascending, [B, N] live): up to `num_anchors` per sequence among the positions a with
    valid[a] and loss_mask[a + 1]; rows with fewer are padded with anchor 0, not live."""
    eligible = valid[:, :-1] & loss_mask[:, 1:].bool()
    picks = []
    for row in eligible:
        idx = row.nonzero().squeeze(-1)
        order = torch.randperm(idx.numel(), generator=generator, device="cpu").to(idx.device)
        picks.append(idx[order[:num_anchors]].sort().values)
    N = max(1, max(p.numel() for p in picks))
    anchors = torch.zeros(len(picks), N, dtype=torch.long, device=loss_mask.device)
    live = torch.zeros_like(anchors, dtype=torch.bool)
    for b, p in enumerate(picks):
        anchors[b, : p.numel()], live[b, : p.numel()] = p, True
    return anchors, live


def block_forward(model, draft: DFlashDraftModel, batch: TargetBatch, anchors: torch.Tensor) -> torch.Tensor:
    """[B, N, bs, H]: every anchor's block through the draft in one forward over the whole sequence's context."""
    B, T = batch.input_ids.shape
    bs, N = draft.block_size, anchors.shape[1]
    ids = draft.block_ids(batch.input_ids.gather(1, anchors).flatten()).view(B, N * bs)
    block_pos = (anchors[:, :, None] + torch.arange(bs, device=anchors.device)).view(B, N * bs)
    positions = torch.cat((torch.arange(T, device=anchors.device).expand(B, T), block_pos), dim=1)
    mask = torch.cat([block_attention_mask(a, bs, T) for a in anchors])  # [B, 1, N * bs, T + N * bs]
    context = draft.project_target_features(batch.features)
    return model(ids, context, positions, mask).view(B, N, bs, -1)


class DFlashMethod:
    name = DFLASH

    def __init__(self, block_size: int, num_anchors: int = DFLASH_NUM_ANCHORS, gamma: float | None = None,
                 objective: str = DEFAULT_OBJECTIVE, tv_weight: float = DEFAULT_TV_WEIGHT, seed: int = 0):
        self.num_positions, self.block_size, self.num_anchors = block_size - 1, block_size, num_anchors
        self.gamma = gamma or default_gamma(block_size)
        self.objective, self.tv_weight = objective, tv_weight
        self.sim_states = 0  # no greedy rollouts from the loop: the chain estimate comes from the blocks themselves
        self.generator = torch.Generator().manual_seed(seed)

    def _blocks(self, model, draft, batch: TargetBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anchors [B, N], live [B, N], the blocks' hidden states [B, N, bs, H]) of this step's anchors."""
        anchors, live = sample_anchors(batch.loss_mask, batch.valid, self.num_anchors, self.generator)
        return anchors, live, block_forward(model, draft, batch, anchors)

    def _step(self, draft, batch: TargetBatch, anchors: torch.Tensor, live: torch.Tensor, hidden: torch.Tensor,
              measure: bool = True):
        """(the weighted loss, metric sums by slot) over every trained (anchor, slot): slot j + 1 predicts the
        token at anchor + j + 1, from the target's distribution at the row before it. Without `measure`, the label
        objective skips the target's logits: its sums are then the hard CE and hits against the data's tokens."""
        b, n, j, pos = trained_slots(batch, anchors, live, self.block_size)
        logits = draft.compute_logits(hidden[b, n, j + 1]).float()  # [M, V]; fp32 also makes argmax fast on CPUs
        labels = batch.input_ids[b, pos]
        if self.objective == LABEL_OBJECTIVE and not measure:
            loss = F.cross_entropy(logits, labels, reduction="none")
            ce, alpha, top = loss.detach(), None, labels
        else:
            target_logits = batch.rows_logits(b, pos - 1)  # [M, V]
            label = self.objective == LABEL_OBJECTIVE
            loss, ce, alpha = objective_loss(logits, torch.softmax(target_logits.float(), -1),
                                             "ce" if label else self.objective, self.tv_weight)
            if label:
                loss = F.cross_entropy(logits, labels, reduction="none")
            top = target_logits.argmax(-1)
        weight = torch.exp(-j.float() / self.gamma)
        total = (weight * loss).sum() / weight.sum().clamp(min=1e-9)
        return total, slot_sums(j, self.num_positions, ce, logits.detach().argmax(-1) == top, alpha)

    def train_step(self, model, draft, batch: TargetBatch) -> StepOutput:
        loss, sums = self._step(draft, batch, *self._blocks(model, draft, batch), measure=False)
        return StepOutput(loss, sums)

    @torch.no_grad()
    def eval_step(self, model, draft, batch: TargetBatch, greedy: torch.Tensor | None) -> dict[str, torch.Tensor]:
        blocks = self._blocks(model, draft, batch)
        _, sums = self._step(draft, batch, *blocks)
        sums.update(chain_estimate(draft, batch, *blocks))
        return sums


def trained_slots(batch: TargetBatch, anchors: torch.Tensor, live: torch.Tensor, block_size: int):
    """(b, n, j, pos) of every trained (anchor, slot): sequence b, anchor n, slot j + 1, predicting the token at
    pos = anchor + j + 1, where that position exists and loss_mask holds."""
    T = batch.input_ids.shape[1]
    pos = anchors[:, :, None] + torch.arange(1, block_size, device=anchors.device)  # [B, N, bs - 1]
    trained = live[:, :, None] & (pos < T)
    trained &= batch.loss_mask.gather(1, pos.clamp(max=T - 1).flatten(1)).view_as(pos).bool()
    b, n, j = trained.nonzero(as_tuple=True)
    return b, n, j, pos[b, n, j]


@torch.no_grad()
def slot_sums(j: torch.Tensor, num_positions: int, ce: torch.Tensor, hit: torch.Tensor,
              alpha: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-slot sums as EAGLE-3 reports its TTT steps (no accept_sum_* without the target's distribution)."""
    sums = {}
    for s in range(num_positions):
        at = j == s
        sums.update({f"count_{s}": at.sum().float(), f"ploss_sum_{s}": ce[at].sum().detach(),
                     f"correct_{s}": hit[at].sum().float()})
        if alpha is not None:
            sums[f"accept_sum_{s}"] = alpha[at].sum().detach()
    return sums


@torch.no_grad()
def chain_estimate(draft: DFlashDraftModel, batch: TargetBatch, anchors: torch.Tensor, live: torch.Tensor,
                   hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Simulated tau of the blocks drafted as chains (and cut at ENGINE_CHAIN_DEPTH), summed over live anchors."""
    T, bs = batch.input_ids.shape[1], draft.block_size
    raw = anchors[:, :, None] + torch.arange(1, bs, device=anchors.device)  # [B, N, bs - 1]: predicted positions
    pos = raw.clamp(max=T - 1)
    b = torch.arange(pos.shape[0], device=pos.device)[:, None, None].expand_as(pos)
    top = batch.rows_argmax(b.flatten(), (pos - 1).flatten()).view_as(pos)  # the target's next token there
    drafted = draft.compute_logits(hidden[:, :, 1:]).argmax(-1)
    inside = (raw < T) & batch.valid.gather(1, pos.flatten(1)).view_as(pos)
    follows = batch.input_ids.gather(1, pos.flatten(1)).view_as(pos) == top  # the data stays on the greedy path
    on_path = torch.cat((torch.ones_like(follows[..., :1]), follows[..., :-1]), -1).long().cumprod(-1).bool()
    matched = ((drafted == top) & inside & on_path).long().cumprod(-1)
    live_f = live.float()
    return {"sim_chain_sum": ((matched.sum(-1) + 1) * live_f).sum().double(),
            "sim_chain3_sum": ((matched[..., :ENGINE_CHAIN_DEPTH].sum(-1) + 1) * live_f).sum().double(),
            "sim_positions": live_f.sum()}

