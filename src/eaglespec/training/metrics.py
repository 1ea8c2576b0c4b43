"""Training metrics: exact aggregation over batches/ranks, the target's greedy continuations for
the simulated acceptance length, the tutorial's log lines, metrics.jsonl and TensorBoard / W&B.

Simulated acceptance length: compare the draft with the target's greedy continuation of the same
prefix (computed exactly by the target, once per test batch and run, depth = the decoder's default tree
depth), from a few decoding states per test batch (--sim-states, evenly spaced over its trained positions).
Two estimates (training.methods.simulated_acceptance), each 1 (bonus token) + the number of leading
accepted tokens:
- chain: the draft rolled forward on its own greedy tokens; estimates tau of chain decoding;
- tree: the decoder's own default dynamic tree, built from that state; accepted = what greedy
  verification would accept (the number to compare with `eaglespec generate`, which uses that tree).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import DynamicCache

from eaglespec.models.target import TargetModel
from eaglespec.training.ttt import query_slots

logger = logging.getLogger(__name__)

REPORT_TO = ("none", "tensorboard", "wandb")


@torch.no_grad()
def target_greedy_continuations(target: TargetModel, input_ids: torch.Tensor, depth: int,
                                rows: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """[B, T] -> [B, T, depth]: row s of sequence b holds the target's greedy tokens after the prefix
    x_0..x_s, for every (b, s) in `rows` (None: all rows); other rows hold -1 after depth 0.

    One target forward over the batch, then depth - 1 forwards that extend only the wanted prefixes, all at
    once, with the diagonal mask pattern of training-time test: continuation i sees its sequence's keys
    0..s_i and its own earlier tokens. Padded rows (right padding) produce values nobody reads.
    """
    B, T = input_ids.shape
    device = input_ids.device
    cache = DynamicCache()
    positions = torch.arange(T, device=device)[None].expand(B, T)
    out = target(input_ids, position_ids=positions, cache=cache)
    first = out.logits.argmax(-1)  # [B, T]
    if rows is None:
        ends, live = positions, torch.ones(B, T, dtype=torch.bool, device=device)
    else:
        ends, live = query_slots(rows, B, device)
    result = torch.full((B, T, depth), -1, dtype=torch.long, device=device)
    result[..., 0] = first
    tokens = first.gather(1, ends)  # [B, S]
    seen = torch.arange(T, device=device)[None, None, :] <= ends[:, :, None]  # [B, S, T]: the prefix
    own = torch.eye(ends.shape[1], dtype=torch.bool, device=device).expand(B, -1, -1)  # each slot's own tokens
    b_idx = torch.arange(B, device=device)[:, None].expand_as(ends)
    for d in range(1, depth):
        mask = torch.cat([seen] + [own] * d, dim=-1)[:, None]  # [B, 1, S, T + S * d]
        tokens = target(tokens, position_ids=ends + d, attention_mask=mask, cache=cache).logits.argmax(-1)
        result[b_idx[live], ends[live], d] = tokens[live]
    return result


class MetricSums:
    """Sums of per-batch metric numerators/denominators; averaged once per epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, sums: dict[str, torch.Tensor]) -> None:
        for k, v in sums.items():
            v = v.detach().double().cpu()
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def reduced(self, all_reduce_sum) -> dict[str, float]:
        """Sum across ranks with `all_reduce_sum(tensor) -> tensor` (identity for one process)."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        stacked = all_reduce_sum(torch.stack([self.sums[k] for k in keys]))
        return {k: float(v) for k, v in zip(keys, stacked.tolist())}


@dataclass
class EpochMetrics:
    split: str  # "train" | "test"
    epoch: int  # 1-based
    num_epochs: int
    step: int
    acc: list[float]  # per position, percent
    ploss: list[float]  # per position
    positions_trained: list[int]
    accept: list[float] = field(default_factory=list)  # EAGLE-3, per position: mean sum min(p, q), percent
    vloss: float | None = None  # EAGLE-1
    topk_acc: dict[str, float] = field(default_factory=dict)  # EAGLE-1: {"top2": .., "top3": ..} percent
    sim_accept_length: float | None = None  # tree simulation (compare with measured dynamic-tree tau)
    sim_accept_length_chain: float | None = None
    sim_accept_length_chain3: float | None = None  # the chain cut at 3 tokens (llama.cpp's default chain)
    lr: float | None = None


def epoch_metrics(split: str, epoch: int, num_epochs: int, step: int, sums: dict[str, float],
                  num_positions: int, lr: float | None = None) -> EpochMetrics:
    def ratio(num: str, den: str, scale: float = 1.0) -> float:
        return scale * sums.get(num, 0.0) / max(sums.get(den, 0.0), 1.0)

    m = EpochMetrics(
        split, epoch, num_epochs, step,
        acc=[ratio(f"correct_{j}", f"count_{j}", 100.0) for j in range(num_positions)],
        ploss=[ratio(f"ploss_sum_{j}", f"count_{j}") for j in range(num_positions)],
        positions_trained=[int(sums.get(f"count_{j}", 0)) for j in range(num_positions)],
        accept=[ratio(f"accept_sum_{j}", f"count_{j}", 100.0) for j in range(num_positions) if f"accept_sum_{j}" in sums],
        lr=lr,
    )
    if "vloss_sum" in sums:
        m.vloss = ratio("vloss_sum", "count_0")
        m.topk_acc = {f"top{k}": ratio(f"top{k}_correct", "count_0", 100.0) for k in (2, 3)}
    if sums.get("sim_positions", 0) > 0:
        m.sim_accept_length_chain = ratio("sim_chain_sum", "sim_positions")
        if "sim_chain3_sum" in sums:
            m.sim_accept_length_chain3 = ratio("sim_chain3_sum", "sim_positions")
        if sums.get("sim_tree_states", 0) > 0:  # --sim-states 0: no tree estimate
            m.sim_accept_length = ratio("sim_tree_sum", "sim_tree_states")
    return m


def format_lines(m: EpochMetrics) -> list[str]:
    """The tutorial's lines: `Train Epoch [1/20], position 0, Acc: 45.23` / `..., pLoss: 2.34`."""
    head = f"{m.split.capitalize()} Epoch [{m.epoch}/{m.num_epochs}]"
    lines = []
    for j, (acc, ploss) in enumerate(zip(m.acc, m.ploss)):
        lines.append(f"{head}, position {j}, Acc: {acc:.2f}")
        lines.append(f"{head}, position {j}, pLoss: {ploss:.2f}")
    if m.accept:
        lines.append(f"{head}, expected acceptance (sampling) by position: " + " / ".join(f"{a:.2f}" for a in m.accept))
    if m.vloss is not None:
        lines.append(f"{head}, vLoss: {m.vloss:.4f}")
        lines.extend(f"{head}, position 0, {k.capitalize()} Acc: {v:.2f}" for k, v in m.topk_acc.items())
    if m.sim_accept_length_chain is not None:
        tree = f"{m.sim_accept_length:.2f} (dynamic tree), " if m.sim_accept_length is not None else ""
        chain3 = f", {m.sim_accept_length_chain3:.2f} (chain of 3)" if m.sim_accept_length_chain3 is not None else ""
        lines.append(f"{head}, simulated acceptance length: {tree}{m.sim_accept_length_chain:.2f} (chain){chain3}")
    return lines


def flat_scalars(m: EpochMetrics) -> dict[str, float]:
    """`train/acc_0`-style scalars for TensorBoard / W&B."""
    out: dict[str, float] = {}
    for j, (acc, ploss) in enumerate(zip(m.acc, m.ploss)):
        out[f"{m.split}/acc_{j}"], out[f"{m.split}/ploss_{j}"] = acc, ploss
    out.update({f"{m.split}/accept_{j}": a for j, a in enumerate(m.accept)})
    if m.vloss is not None:
        out[f"{m.split}/vloss"] = m.vloss
        out.update({f"{m.split}/{k}_acc": v for k, v in m.topk_acc.items()})
    if m.sim_accept_length is not None:
        out[f"{m.split}/sim_accept_length"] = m.sim_accept_length
    if m.sim_accept_length_chain is not None:
        out[f"{m.split}/sim_accept_length_chain"] = m.sim_accept_length_chain
    if m.sim_accept_length_chain3 is not None:
        out[f"{m.split}/sim_accept_length_chain3"] = m.sim_accept_length_chain3
    if m.lr is not None:
        out[f"{m.split}/lr"] = m.lr
    return out


def append_jsonl(path: Path, m: EpochMetrics) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(asdict(m)) + "\n")


# --------------------------------------------------------------------------------------------------
class MetricsLogger(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    def log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError("--report-to tensorboard needs tensorboard: pip install 'eaglespec[tracking]'") from e
        self.writer = SummaryWriter(str(logdir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, logdir: Path, config: dict, project: str = "eaglespec"):
        try:
            import wandb
        except ImportError as e:
            raise ValueError("--report-to wandb needs wandb: pip install 'eaglespec[tracking]'") from e
        self.run = wandb.init(project=project, dir=str(logdir), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_logger(report_to: str, logdir: Path, config: dict) -> MetricsLogger:
    if report_to == "none":
        return NullLogger()
    if report_to == "tensorboard":
        return TensorBoardLogger(logdir / "tensorboard")
    if report_to == "wandb":
        return WandbLogger(logdir, config)
    raise ValueError(f"--report-to: expected one of {REPORT_TO}, got {report_to!r}")
