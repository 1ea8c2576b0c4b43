"""A small target vLLM's CPU backend runs (head_dim 32) and an EAGLE or DFlash draft trained on it for a few minutes, so
acceptance measured by vLLM and by us is not trivially zero. Built once, cached under the interop home.

The target is a random 8-layer Llama (its lm_head sharpened so its text has structure) with the bundled
stories260K tokenizer; the drafts are trained on its own greedy continuations of random prompts (the text greedy
decoding later produces), without its byte-fallback tokens so that the texts survive decode + encode.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from eaglespec.models import bundled_model_path

VERSION = "v2"  # bump when anything below changes: the cache is keyed by it
SAMPLES, PROMPT_TOKENS, SAMPLE_TOKENS, TRAIN_MINUTES = 800, 4, 64, 3.0
BYTE_TOKENS = range(3, 259)  # the stories260K tokenizer's <0x00>..<0xFF> byte-fallback pieces
TARGET_CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                     bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
SHARPEN = 4.0  # lm_head scale: random logits are near-uniform; this gives the target's text some structure
DFLASH_BLOCK = 4  # the DFlash draft's block: 3 drafted tokens, the engines' usual chain


def build_target(directory: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TARGET_CONFIG), dtype=torch.float32)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(SHARPEN)
        head[list(BYTE_TOKENS)] = 0  # never the argmax in practice: byte pieces do not survive decode + encode
    model.save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(bundled_model_path() / name, directory / name)
    return directory


def sample_texts(target_dir: Path, output: Path, batch: int = 200) -> Path:
    """Greedy continuations of random prompts (BOS + PROMPT_TOKENS non-byte tokens), as {"text"} JSONL."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(SAMPLES // batch):
        prompt = torch.randint(BYTE_TOKENS.stop, TARGET_CONFIG["vocab_size"], (batch, PROMPT_TOKENS), generator=g)
        prompt = torch.cat([torch.ones(batch, 1, dtype=torch.long), prompt], dim=1)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=SAMPLE_TOKENS, do_sample=False, pad_token_id=0)
        lines += [json.dumps({"text": t}) for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
    output.write_text("\n".join(lines) + "\n")
    return output


def train(target_dir: Path, data: Path, method: str, output: Path) -> Path:
    from eaglespec.training.config import CommonTrainConfig, DFlashTrainConfig, Eagle1TrainConfig, Eagle3TrainConfig
    from eaglespec.training.run import train_dflash, train_eagle1, train_eagle3

    common = CommonTrainConfig(basepath=str(target_dir), output_dir=output, lr=3e-3, batch_size=16, num_epochs=50,
                               grad_accum=1, max_len=SAMPLE_TOKENS + 8, warmup_steps=30,
                               time_budget_minutes=TRAIN_MINUTES, progress=False)
    if method == "eagle3":
        result = train_eagle3(Eagle3TrainConfig(common=common, data=data, ttt_length=4, full_save_every=50))
    elif method == "dflash":
        result = train_dflash(DFlashTrainConfig(common=common, data=data, block_size=DFLASH_BLOCK, full_save_every=50))
    else:
        result = train_eagle1(Eagle1TrainConfig(common=common, data=data, save_freq=50))
    if result.last_checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint into {output}")
    return Path(result.last_checkpoint)


def tiny_trained(root: Path, method: str) -> tuple[Path, Path]:
    """(target dir, trained draft dir), built on first use."""
    from eaglespec.data import prepare_dataset

    home = root / f"tiny-trained-{VERSION}"
    target = home / "target"
    if not (target / "config.json").is_file():
        home.mkdir(parents=True, exist_ok=True)
        build_target(target)
    prepared = home / "prepared"
    if not (prepared / "prepare_meta.json").is_file():
        texts = sample_texts(target, home / "texts.jsonl")
        prepare_dataset(texts, str(target), prepared, data_format="text", max_len=SAMPLE_TOKENS + 8,
                        overwrite=True, progress=False)
    done = home / f"{method}.done"
    if not done.is_file():
        done.write_text(str(train(target, prepared, method, home / f"run-{method}")))
    return target, Path(done.read_text())
