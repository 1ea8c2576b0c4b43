"""The one training loop both methods use: epochs, gradient accumulation, evaluation, metrics,
checkpoints, clean stops (max steps / time budget) and divergence handling. It talks to the
optimizer only through an Engine and to the method only through a TrainMethod."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eaglespec.models.draft import EagleDraftModel
from eaglespec.models.target import TargetModel
from eaglespec.training.checkpoint import (
    TrainState,
    checkpoint_dir,
    find_latest_complete,
    is_save_epoch,
    save_checkpoint,
)
from eaglespec.training.data import (
    TokenDataset,
    epoch_order,
    iterate_batches,
    length_grouped_order,
    num_batches,
    sample_length,
)
from eaglespec.training.engine import Engine
from eaglespec.training.methods import TrainMethod, sim_rows
from eaglespec.training.metrics import (
    MetricSums,
    MetricsLogger,
    append_jsonl,
    epoch_metrics,
    flat_scalars,
    format_lines,
    target_greedy_continuations,
)

logger = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """A non-finite loss or gradient: training stops without writing a checkpoint."""


@dataclass
class LoopConfig:
    output_dir: Path
    num_epochs: int
    batch_size: int
    grad_accum: int
    max_len: int
    seed: int
    resumable_every: int  # EAGLE-1 --save-freq / EAGLE-3 --full-save-every (epochs, 1-based)
    per_epoch_draft_dtype: torch.dtype | None = None  # EAGLE-3: a 16-bit draft every epoch; None: none
    max_steps: int | None = None
    time_budget_s: float | None = None
    save_every_s: float | None = None  # a resumable checkpoint mid-epoch this often (--save-every-minutes)
    sim_depth: int = 5  # the method's SIM_DEPTH
    eval_every: int = 1  # epochs between test evaluations (the last epoch and a clean stop always evaluate)
    group_by_length: bool = False  # see training.data.epoch_batches
    progress: bool = True
    run_config: dict = field(default_factory=dict)  # saved in checkpoints and sent to W&B


@dataclass
class TrainData:
    train_dataset: TokenDataset
    train_indices: list[int]
    test_dataset: TokenDataset
    test_indices: list[int]
    source: object  # callable TokenBatch -> TargetBatch (online target or offline features)
    target: TargetModel  # for the greedy continuations of the simulated acceptance length


def steps_per_epoch(n_train: int, batch_size: int, grad_accum: int, rank: int = 0, world_size: int = 1,
                    whole_groups: bool = False) -> int:
    """Optimizer steps per epoch. whole_groups (DeepSpeed): a trailing partial accumulation group is
    dropped, since DeepSpeed would carry it into the next epoch; otherwise it is stepped on its own."""
    batches = num_batches(n_train, batch_size, rank, world_size)
    return batches // grad_accum if whole_groups else math.ceil(batches / grad_accum)


class Trainer:
    def __init__(self, method: TrainMethod, draft: EagleDraftModel, engine: Engine, data: TrainData,
                 cfg: LoopConfig, metrics_logger: MetricsLogger):
        self.method, self.draft, self.engine, self.data, self.cfg = method, draft, engine, data, cfg
        self.metrics_logger = metrics_logger
        self.greedy_cache: dict[int, torch.Tensor] = {}
        self.started = self.last_save = time.monotonic()
        self.epoch_tokens = 0  # tokens (padding excluded) this rank trained on in the current epoch
        self.lengths: dict[int, int] | None = None  # training sample lengths, for --group-by-length

    # ----------------------------------------------------------------------------------------------
    def train(self, state: TrainState) -> TrainState:
        """Train from `state` to the end (or a clean stop); returns the final state."""
        cfg = self.cfg
        self.started = self.last_save = time.monotonic()
        for epoch in range(state.epoch + 1, cfg.num_epochs + 1):
            if self._should_stop(state):
                break
            t0 = time.monotonic()
            train_sums, stopped = self._train_epoch(epoch, state)
            train_s = time.monotonic() - t0
            self._report("train", epoch, state, train_sums)
            timing = f"epoch {epoch}: trained {self.epoch_tokens} tokens in {train_s:.1f} s " \
                     f"({self.epoch_tokens / max(train_s, 1e-9):.0f} tokens/s)"
            if stopped or epoch == cfg.num_epochs or epoch % cfg.eval_every == 0:
                t0 = time.monotonic()
                self._report("test", epoch, state, self._evaluate())
                timing += f"; test evaluation {time.monotonic() - t0:.1f} s"
            self._log_main(timing)
            self._save(epoch, state, final=stopped or epoch == cfg.num_epochs)
            if stopped:
                reason = self._stop_reason(state)
                resumable = self.cfg.max_steps is None or state.step < self.cfg.max_steps  # not the planned end
                hint = "; resume with --resume to continue" if resumable else ""
                self._log_main(f"stopped at step {state.step} ({reason}){hint}")
                break
        return state

    def _should_stop(self, state: TrainState) -> bool:
        return self._stop_reason(state) is not None

    def _stop_reason(self, state: TrainState) -> str | None:
        if self.cfg.max_steps is not None and state.step >= self.cfg.max_steps:
            return f"--max-steps {self.cfg.max_steps}"
        if self.cfg.time_budget_s is not None and self._any_rank(time.monotonic() - self.started >= self.cfg.time_budget_s):
            return f"time budget of {self.cfg.time_budget_s / 60:g} minutes"
        return None

    def _save_due(self) -> bool:
        """--save-every-minutes has passed since the last checkpoint (every rank agrees: the save is collective)."""
        every = self.cfg.save_every_s
        return every is not None and self._any_rank(time.monotonic() - self.last_save >= every)

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` holds on any rank. Decisions that lead to different collective
        calls (stop now, raise now) must agree: rank clocks differ, and one rank may see a NaN alone."""
        if self.engine.world_size == 1:
            return flag
        return bool(self.engine.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    # ----------------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, state: TrainState) -> tuple[MetricSums, bool]:
        cfg, engine = self.cfg, self.engine
        order = epoch_order(self.data.train_indices, epoch, cfg.seed, shuffle=True)
        n = num_batches(len(order), cfg.batch_size, engine.rank, engine.world_size)
        if engine.whole_accumulation_groups:  # DeepSpeed counts micro-batches itself: no short last group
            n -= n % cfg.grad_accum
        sums = MetricSums()
        model = engine.forward_module()
        model.train()
        bar = tqdm(total=n, initial=state.batches_done, desc=f"epoch {epoch}/{cfg.num_epochs}",
                   disable=not (cfg.progress and engine.is_main), dynamic_ncols=True, leave=False)
        tokens, t0, group_loss = 0, time.monotonic(), 0.0
        if cfg.group_by_length:
            order = length_grouped_order(order, self._train_lengths(), cfg.batch_size, epoch, cfg.seed)
        batches = iterate_batches(self.data.train_dataset, order, cfg.batch_size, cfg.max_len,
                                  engine.rank, engine.world_size, skip_batches=state.batches_done)
        for b, batch in enumerate(batches, start=state.batches_done):
            if b >= n:  # the trimmed partial accumulation group
                break
            group_size = min(cfg.grad_accum, n - (b - b % cfg.grad_accum))  # the last group may be short
            target_batch = self.data.source(batch)
            with engine.autocast():
                out = self.method.train_step(model, self.draft, target_batch)
            self._check_finite(out.loss, "loss", epoch, b, state)
            engine.backward(out.loss / group_size)
            group_loss += out.loss.item() / group_size  # the mean over the group, for logging
            sums.add(out.sums)
            tokens += batch.num_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", tok_s=f"{tokens / max(time.monotonic() - t0, 1e-6):.0f}",
                            lr=f"{engine.lr():.2e}")
            if (b + 1) % cfg.grad_accum and b + 1 < n:
                continue
            try:
                grad_norm = engine.step()
            except FloatingPointError as e:
                self._diverged(str(e), epoch, b, state)
            state.step += 1
            state.batches_done = b + 1
            self.metrics_logger.log({"train/loss": group_loss, "train/lr": engine.lr(),
                                     **({"train/grad_norm": grad_norm} if grad_norm is not None else {})}, state.step)
            group_loss = 0.0
            if self._should_stop(state) and b + 1 < n:
                bar.close()
                self.epoch_tokens = tokens
                return sums, True
            if b + 1 < n and self._save_due():
                self._save(epoch, state, final=True)
        bar.close()
        self.epoch_tokens = tokens
        state.epoch, state.batches_done = epoch, 0
        return sums, self._should_stop(state) and epoch < cfg.num_epochs

    def _train_lengths(self) -> dict[int, int]:
        if self.lengths is None:
            self.lengths = {i: sample_length(self.data.train_dataset, i) for i in self.data.train_indices}
        return self.lengths

    def _check_finite(self, loss: torch.Tensor, what: str, epoch: int, batch: int, state: TrainState) -> None:
        if self._any_rank(not bool(torch.isfinite(loss.detach()).all())):
            self._diverged(f"{what} is {loss.item()} (on rank {self.engine.rank}; non-finite on at least one rank)",
                           epoch, batch, state)

    def _diverged(self, what: str, epoch: int, batch: int, state: TrainState) -> None:
        last = find_latest_complete(self.cfg.output_dir, resumable=True)
        raise TrainingDiverged(
            f"training diverged: {what} at step {state.step + 1} (epoch {epoch}, batch {batch}); no checkpoint was "
            f"written for it. Last good checkpoint: {last if last else 'none'}. Hint: lower --lr (now "
            f"{self.engine.lr():.3g}) or train in bf16/fp32 (--precision bf16; fp16 overflows easily)."
        )

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self) -> MetricSums:
        cfg, engine = self.cfg, self.engine
        sums = MetricSums()
        model = engine.forward_module()
        model.eval()
        batches = iterate_batches(self.data.test_dataset, self.data.test_indices, cfg.batch_size, cfg.max_len,
                                  engine.rank, engine.world_size)
        # Ranks run equally many batches (a forward may be a collective), so the last round repeats early
        # batches; those repeats are evaluated but counted as zeros (every rank must hold the same metric
        # keys: _report's all-reduce is a collective, and a rank with nothing to reduce would hang the others).
        real_batches = math.ceil(len(self.data.test_indices) / cfg.batch_size)
        for i, batch in enumerate(batches):
            target_batch = self.data.source(batch)
            greedy = self._greedy(i, target_batch)
            with engine.autocast():
                batch_sums = self.method.eval_step(model, self.draft, target_batch, greedy)
            if i * engine.world_size + engine.rank >= real_batches:
                batch_sums = {k: torch.zeros_like(v) for k, v in batch_sums.items()}
            sums.add(batch_sums)
        return sums

    def _greedy(self, i: int, batch) -> torch.Tensor | None:
        """The target's greedy continuations at the simulated states of test batch i (once per run), or
        None when the simulation is off (--sim-states 0)."""
        n = self.method.sim_states
        if n == 0:
            return None
        if i not in self.greedy_cache:
            rows = sim_rows(batch, n)
            self.greedy_cache[i] = target_greedy_continuations(self.data.target, batch.input_ids, self.cfg.sim_depth,
                                                               rows).cpu()
        return self.greedy_cache[i].to(batch.input_ids.device)

    def _report(self, split: str, epoch: int, state: TrainState, sums: MetricSums) -> None:
        totals = sums.reduced(self.engine.all_reduce_sum)
        if not totals or not self.engine.is_main:
            return
        m = epoch_metrics(split, epoch, self.cfg.num_epochs, state.step, totals, self.method.num_positions,
                          lr=self.engine.lr() if split == "train" else None)
        for line in format_lines(m):
            print(line, flush=True)
        append_jsonl(self.cfg.output_dir / "metrics.jsonl", m)
        self.metrics_logger.log(flat_scalars(m), state.step)

    def _save(self, epoch: int, state: TrainState, final: bool) -> None:
        cfg = self.cfg
        resumable = final or is_save_epoch(epoch, cfg.num_epochs, cfg.resumable_every)
        if not resumable and cfg.per_epoch_draft_dtype is None:
            return
        path = checkpoint_dir(cfg.output_dir, epoch)
        # every rank: the write is collective (shared temp dir; DeepSpeed saves per-rank partitions)
        # EAGLE-3 drafts leave out the target's embedding (bound again at load), so the draft file stays small.
        embedding = self.data.target.embed_tokens.weight if self.method.name == "eagle3" else None
        save_checkpoint(path, self.draft, self.engine, state, cfg.run_config, resumable, cfg.per_epoch_draft_dtype,
                        embedding)
        self.last_save = time.monotonic()
        self._log_main(f"saved {'resumable checkpoint' if resumable else 'draft'} {path}")

    def _log_main(self, text: str) -> None:
        if self.engine.is_main:
            print(text, flush=True)
