"""Train the FIM code model: tokenizer, data, a resumable bf16-autocast loop with one lr schedule, the finish.

Schedule: linear warmup over `warmup_steps`, then cosine decay to `min_lr_ratio` x lr over the run's progress,
progress = max(step / max_steps, CPU time / time budget). Whichever limit is nearer ends the schedule, and
both are counted across resumes, so an interrupted run follows the same curve as an uninterrupted one.
The budget is the process's CPU time, not wall-clock time: on a shared machine a step's wall time depends on
what else runs (a step took 9 s or 38 s here under the same settings), its CPU time much less so; with one
thread on an idle machine the two agree.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM

from codefim.checkpoint import TrainState, load_checkpoint, save_checkpoint
from codefim.config import RecipeConfig
from codefim.corpus import Corpus, load_corpus, stdlib_root
from codefim.model import build_model, llama_config
from codefim.samples import IGNORE_INDEX, FimLayouts, Rows, build_rows, chunk_corpus
from codefim.tokenizer import save_hf_tokenizer, train_bpe

log = logging.getLogger(__name__)
LOSS_LOG_EVERY = 10  # steps per recorded train-loss point (the mean over those steps)
GRAD_CLIP = 1.0
ADAM_BETAS = (0.9, 0.95)  # nanoGPT's for small GPTs
PROGRESS_TICKS = 1000  # the bar counts progress (steps or time, whichever is further) in thousandths


@dataclass
class Data:
    corpus: Corpus
    tokenizer: Any
    layouts: FimLayouts
    chunks: list[str]
    heldout: Rows
    train_tokens: int  # the train files' tokens (plain text, no FIM), for the card


def progress_of(config: RecipeConfig, state: TrainState) -> float:
    return max(state.step / config.max_steps, state.cpu_seconds / (config.time_budget_min * 60))


def _ticks(config: RecipeConfig, state: TrainState) -> int:
    return min(PROGRESS_TICKS, int(progress_of(config, state) * PROGRESS_TICKS))


def lr_at(config: RecipeConfig, state: TrainState) -> float:
    warmup = min(1.0, (state.step + 1) / config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress_of(config, state))))
    return config.lr * warmup * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def source_corpus(config: RecipeConfig) -> Corpus:
    return load_corpus(Path(config.source) if config.source else stdlib_root(), config.seed, config.heldout_fraction)


def load_data(config: RecipeConfig, corpus: Corpus, output: Path) -> Data:
    """The tokenizer (trained on the train files once, then read back), chunks, held-out rows."""
    if not (output / "tokenizer.json").exists():
        save_hf_tokenizer(train_bpe((f.text for f in corpus.train), config.vocab_size), output, config.seq_len)
    tokenizer = AutoTokenizer.from_pretrained(output)
    layouts = FimLayouts.of(tokenizer, config.fim_rate, config.spm_rate)
    heldout_chunks = chunk_corpus(tokenizer, corpus.heldout, config.seq_len)
    heldout = build_rows(tokenizer, heldout_chunks, layouts, config.seq_len, random.Random(f"{config.seed}:heldout"))
    train_tokens = sum(len(ids) for ids in tokenizer([f.text for f in corpus.train], verbose=False)["input_ids"])
    return Data(corpus, tokenizer, layouts, chunk_corpus(tokenizer, corpus.train, config.seq_len),
                _first_rows(heldout, config.heldout_rows), train_tokens)


def _first_rows(rows: Rows, count: int) -> Rows:
    labels = rows.labels[:count]
    return Rows(rows.input_ids[:count], labels, rows.samples, rows.fim_samples, rows.skipped,
                int((labels != IGNORE_INDEX).sum()))


def epoch_rows(config: RecipeConfig, data: Data, epoch: int) -> Rows:
    """Epoch `epoch`'s rows: its own seeded shuffle and FIM draws, the same on every resume."""
    return build_rows(data.tokenizer, data.chunks, data.layouts, config.seq_len,
                      random.Random(f"{config.seed}:epoch:{epoch}"))


def train_step(model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, input_ids: np.ndarray,
               labels: np.ndarray) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=torch.from_numpy(input_ids), labels=torch.from_numpy(labels)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, rows: Rows, batch_size: int) -> float:
    """Token-weighted mean cross-entropy over `rows` (bf16 autocast, as trained)."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(rows.input_ids), batch_size):
        labels = torch.from_numpy(rows.labels[start:start + batch_size])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=torch.from_numpy(rows.input_ids[start:start + batch_size]), labels=labels).loss
        tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())  # the model predicts each label from the one before
        total, count = total + loss.item() * tokens, count + tokens
    model.train()
    return total / max(count, 1)


def make_optimizer(model: LlamaForCausalLM, config: RecipeConfig) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (not norms), as nanoGPT and Llama do."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=ADAM_BETAS)


def setup_model(config: RecipeConfig, data: Data, output: Path) -> tuple[LlamaForCausalLM, torch.optim.AdamW,
                                                                        TrainState]:
    tok = data.tokenizer
    model = build_model(llama_config(config.shape, len(tok), config.seq_len, tok.eos_token_id, tok.pad_token_id),
                        config.seed)
    optimizer = make_optimizer(model, config)
    state = load_checkpoint(output, model, optimizer) or TrainState()
    state.runs += 1
    return model, optimizer, state


class _Timer:
    """Wall-clock and CPU seconds since the last `lap()`."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.monotonic(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def train_loop(config: RecipeConfig, data: Data, output: Path, model: LlamaForCausalLM,
               optimizer: torch.optim.AdamW, state: TrainState, show_progress: bool = True) -> TrainState:
    """Steps until progress reaches 1; checkpoints every `checkpoint_every_s` and at the end (or on Ctrl-C)."""
    rows, rows_epoch, window = None, -1, []
    timer, last_save = _Timer(), time.monotonic()
    bar = tqdm(total=PROGRESS_TICKS, initial=_ticks(config, state), disable=not show_progress,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    try:
        while progress_of(config, state) < 1.0:
            if rows_epoch != state.epoch:
                rows, rows_epoch = epoch_rows(config, data, state.epoch), state.epoch
                if state.epoch not in {e for e, *_ in state.epochs}:
                    state.epochs.append((state.epoch, rows.samples, rows.fim_samples, rows.skipped))
                timer.lap()  # building an epoch's rows is data preparation, not training time
            batches = len(rows.input_ids) // config.batch_size  # the last partial batch of an epoch is dropped
            if state.batch_in_epoch >= batches:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            window.append(_one_step(config, model, optimizer, state, rows))
            _account(state, timer, rows, config)
            _record(config, data, model, state, window, bar)
            if time.monotonic() - last_save > config.checkpoint_every_s:
                save_checkpoint(output, state, model, optimizer)
                last_save = time.monotonic()
        if window:  # the last steps, fewer than LOSS_LOG_EVERY
            state.losses.append((state.step, sum(window) / len(window)))
    finally:
        save_checkpoint(output, state, model, optimizer)
        bar.close()
    return state


def _one_step(config: RecipeConfig, model: LlamaForCausalLM, optimizer: torch.optim.AdamW, state: TrainState,
              rows: Rows) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr_at(config, state)
    batch = slice(state.batch_in_epoch * config.batch_size, (state.batch_in_epoch + 1) * config.batch_size)
    return train_step(model, optimizer, rows.input_ids[batch], rows.labels[batch])


def _account(state: TrainState, timer: _Timer, rows: Rows, config: RecipeConfig) -> None:
    batch = slice(state.batch_in_epoch * config.batch_size, (state.batch_in_epoch + 1) * config.batch_size)
    wall, cpu = timer.lap()
    state.train_seconds += wall
    state.cpu_seconds += cpu
    state.tokens += int((rows.labels[batch] != IGNORE_INDEX).sum())
    state.step += 1
    state.batch_in_epoch += 1


def _record(config: RecipeConfig, data: Data, model: LlamaForCausalLM, state: TrainState, window: list[float],
            bar: tqdm) -> None:
    """The train-loss curve every LOSS_LOG_EVERY steps, a held-out loss every `eval_every`, the bar."""
    if len(window) == LOSS_LOG_EVERY:
        state.losses.append((state.step, sum(window) / len(window)))
        window.clear()
    if state.step % config.eval_every == 0:
        state.evals.append((state.step, mean_loss(model, data.heldout, config.batch_size)))
        log.info("step %d: train loss %s, held-out %.4f, %.1f CPU min (%.1f wall), %d tokens", state.step,
                 f"{state.losses[-1][1]:.4f}" if state.losses else "-", state.evals[-1][1],
                 state.cpu_seconds / 60, state.train_seconds / 60, state.tokens)
    bar.update(_ticks(config, state) - bar.n)
    bar.set_postfix(step=state.step, loss=f"{state.losses[-1][1]:.3f}" if state.losses else "-",
                    heldout=f"{state.evals[-1][1]:.3f}" if state.evals else "-",
                    cpu_min=f"{state.cpu_seconds / 60:.1f}", lr=f"{lr_at(config, state):.2e}")
