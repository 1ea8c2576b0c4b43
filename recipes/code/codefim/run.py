"""The recipe end to end: check the output folder, train (or resume), then write the model and its card.

Output folder: the Hugging Face model (config.json, model.safetensors in bf16, tokenizer.json,
tokenizer_config.json), README.md (the card), loss.png, training.json (written last: the model is finished),
recipe.json (the config), train/checkpoint/ (the resumable state, kept so a run can be inspected or extended).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
from pathlib import Path

import torch

from codefim.card import examples_markdown, greedy_middle, heldout_examples, plot_losses
from codefim.checkpoint import TrainState
from codefim.config import RecipeConfig
from codefim.model import parameter_count
from codefim.tokenizer import LLAMA_CPP_PRE
from codefim.training import Data, load_data, mean_loss, setup_model, source_corpus, train_loop

log = logging.getLogger(__name__)
CONFIG_FILE = "recipe.json"
SUMMARY_FILE = "training.json"  # written last; its presence marks a finished model
CARD_EXAMPLES = 5  # issue 37: greedy middles for 5 held-out functions
FINAL_TRAIN_LOSS_POINTS = 10  # final train loss = mean of the last 10 recorded points (100 steps)


class OutputExists(ValueError):
    """The output folder holds a finished model, or something that is not this recipe's."""


def prepare_output(config: RecipeConfig, overwrite: bool) -> bool:
    """Make the output folder ready; True when a saved run is resumed. Refuses to overwrite a finished model
    without `overwrite`, a different config's run, and any folder that is not a recipe output."""
    output = Path(config.output)
    saved = output / CONFIG_FILE
    if (output / SUMMARY_FILE).exists() and not overwrite:
        raise OutputExists(f"{output} holds a finished model ({SUMMARY_FILE}); pass --overwrite to train anew")
    if output.exists() and any(output.iterdir()) and not saved.exists():
        raise OutputExists(f"{output} is not empty and holds no {CONFIG_FILE}: not a recipe output, left alone")
    if overwrite and saved.exists():
        shutil.rmtree(output)
    if saved.exists():
        _check_same_config(RecipeConfig.from_json(saved), config, saved)
        return True
    output.mkdir(parents=True, exist_ok=True)
    saved.write_text(config.to_json() + "\n")
    return False


def _check_same_config(saved: RecipeConfig, asked: RecipeConfig, path: Path) -> None:
    ignore = {"threads"}  # changes speed, not the result
    old, new = dataclasses.asdict(saved), dataclasses.asdict(asked)
    changed = [f"{k}: {old[k]} -> {new[k]}" for k in old if k not in ignore and old[k] != new[k]]
    if changed:
        raise ValueError(f"{path}: resuming a run with other settings ({'; '.join(changed)}); pass the "
                         "saved values, or --overwrite to start over")


def run_recipe(config: RecipeConfig, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Train (or resume) and finish; returns the summary written to training.json."""
    config.check()
    corpus = source_corpus(config)  # a bad --source fails before anything is written
    resumed = prepare_output(config, overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output)
    data = load_data(config, corpus, output)
    model, optimizer, state = setup_model(config, data, output)
    log.info("%s: %s run %d at step %d, %.1f of %.0f CPU minutes", output,
             "resuming" if resumed else "starting", state.runs, state.step, state.cpu_seconds / 60,
             config.time_budget_min)
    state = train_loop(config, data, output, model, optimizer, state, show_progress)
    return finish(config, data, model, state)


def finish(config: RecipeConfig, data: Data, model: torch.nn.Module, state: TrainState) -> dict:
    output = Path(config.output)
    summary = _summary(config, data, model, state)
    examples = heldout_examples(data.corpus.heldout, CARD_EXAMPLES, config.seed, data.tokenizer, config.seq_len)
    model.eval()
    middles = [greedy_middle(model, data.tokenizer, e, data.layouts.psm) for e in examples]
    summary["card_examples_exact"] = sum(m.strip() == e.middle.strip() for e, m in zip(examples, middles))
    model.to(torch.bfloat16).save_pretrained(output)  # issue 37: the model ships in bf16
    plot_losses(state.losses, state.evals, output / "loss.png")
    (output / "README.md").write_text(card_text(summary, examples_markdown(examples, middles)))
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _summary(config: RecipeConfig, data: Data, model: torch.nn.Module, state: TrainState) -> dict:
    recent = state.losses[-FINAL_TRAIN_LOSS_POINTS:]
    return {"parameters": parameter_count(model), "steps": state.step, "epochs_done": state.epoch,
            "tokens_trained": state.tokens, "train_minutes": round(state.train_seconds / 60, 2),
            "cpu_minutes": round(state.cpu_seconds / 60, 2), "runs": state.runs,
            "final_train_loss": round(sum(v for _, v in recent) / len(recent), 4) if recent else None,
            "final_heldout_loss": round(mean_loss(model, data.heldout, config.batch_size), 4),
            "train_files": len(data.corpus.train), "heldout_files": len(data.corpus.heldout),
            "train_chars": data.corpus.train_chars, "train_tokens": data.train_tokens,
            "train_chunks": len(data.chunks), "epoch_samples": state.epochs[:1],  # (epoch, samples, FIM, skipped)
            "heldout_rows": len(data.heldout.input_ids),
            "heldout_tokens": data.heldout.tokens, "vocab_size": len(data.tokenizer),
            "llama_cpp_pre": LLAMA_CPP_PRE, "source": data.corpus.root, "python": platform.python_version(),
            "torch": torch.__version__, "config": dataclasses.asdict(config)}


def _epoch_line(epochs: list) -> str:
    if not epochs:
        return ""
    _, samples, fim, skipped = epochs[0]
    return (f"The first epoch: {samples:,} samples, {fim:,} of them FIM; {skipped:,} longer than the context "
            "after the FIM layout, skipped.")


def card_text(summary: dict, examples: str) -> str:
    c, shape = summary["config"], summary["config"]["shape"]
    return f"""# FIM code model trained on the Python {summary['python']} standard library

A {summary['parameters'] / 1e6:.1f}M-parameter `LlamaForCausalLM` (hidden {shape['hidden_size']}, \
{shape['num_layers']} layers, {shape['num_heads']} heads of {shape['hidden_size'] // shape['num_heads']}, \
tied embeddings) that fills in the middle of Python code, trained from scratch by `recipes/code/train.py` \
of eaglespec on this CPU (bf16 autocast).

- **Licence**: the training data is CPython's standard library source (PSF License Agreement, Python \
Software Foundation); this model is derived from it.
- **Data**: `{summary['source']}`, `*.py` outside `site-packages` and test folders; \
{summary['train_files']} train files ({summary['train_chars']:,} characters, {summary['train_tokens']:,} tokens, \
{summary['train_chunks']:,} chunks of at most {c['seq_len']} tokens), {summary['heldout_files']} held-out files \
(a seeded hash of the path, {c['heldout_fraction']:.0%}). {_epoch_line(summary['epoch_samples'])}
- **FIM**: {c['fim_rate']:.0%} of the chunks FIM-transformed at two random character positions, of those \
{c['spm_rate']:.0%} in SPM layout and the rest PSM; Qwen2.5-Coder's tokens `<|fim_prefix|>` `<|fim_suffix|>` \
`<|fim_middle|>`, the middle ends with `<|endoftext|>`; padding `<|fim_pad|>`; no BOS.
- **Tokenizer**: byte-level BPE, {summary['vocab_size']:,} tokens, trained on the train files; normalizer, \
pre-tokenizer and decoder are Qwen2's, so llama.cpp's `tokenizer.ggml.pre` is `{summary['llama_cpp_pre']}` \
(its converter hashes token ids, so it must be told the name for this new vocabulary).
- **Training**: {summary['steps']:,} steps of {c['batch_size']} x {c['seq_len']} tokens, \
{summary['tokens_trained']:,} trained tokens ({summary['epochs_done']} full epochs), AdamW lr {c['lr']} \
(warmup {c['warmup_steps']}, cosine to {c['min_lr_ratio']}x), {summary['cpu_minutes']} CPU minutes \
({c['threads'] or 'default'} thread(s); budget {c['time_budget_min']:g}) in {summary['train_minutes']} minutes \
wall-clock on a shared machine, {summary['runs']} run(s), seed {c['seed']}.
- **Loss** (nats/token): final train {summary['final_train_loss']}, held-out {summary['final_heldout_loss']} \
({summary['heldout_rows']} held-out rows, {summary['heldout_tokens']:,} tokens, same FIM mix). Curve: `loss.png`.

## Greedy middles on held-out functions

Prefix and suffix given (PSM), the model's greedy middle up to `<|endoftext|>`; \
{summary['card_examples_exact']} of {CARD_EXAMPLES} exact.

{examples}"""
