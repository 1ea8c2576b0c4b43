"""A byte-level BPE tokenizer for code, trained here, with Qwen2.5-Coder's FIM tokens and Qwen2's pre-tokenizer.

The normalizer, pre-tokenizer and decoder are Qwen2's exactly (NFC; its split regex, isolated; byte-level
without prefix space), so llama.cpp's Qwen2 pre-tokenizer (`tokenizer.ggml.pre = "qwen2"`) splits text as this
tokenizer does. llama.cpp's converter picks that name by hashing the token ids of a test string, which depend
on the vocabulary, so for a newly trained vocabulary the name has to be given to the converter, not detected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2's split pattern, as in its tokenizer.json and llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2
QWEN2_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA_CPP_PRE = "qwen2"
END_OF_TEXT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"
SPECIAL_TOKENS = (END_OF_TEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)  # ids 0-4, in this order
MIN_PAIR_FREQUENCY = 2  # a merge seen once is noise, not a token


def qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE of `vocab_size` tokens (special tokens included) over `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = qwen2_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_PAIR_FREQUENCY,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _token_config(max_length: int) -> dict:
    """tokenizer_config.json: EOS / pad named, no BOS (as Qwen2.5-Coder base), FIM tokens special."""
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added, "bos_token": None,
            "eos_token": END_OF_TEXT, "pad_token": FIM_PAD, "unk_token": None, "add_bos_token": False,
            "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": max_length}


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json that `AutoTokenizer.from_pretrained(directory)` loads."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(_token_config(max_length), indent=1) + "\n")
