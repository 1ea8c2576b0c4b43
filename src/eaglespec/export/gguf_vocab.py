"""The target's tokenizer as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) for a llama.cpp draft.

llama.cpp loads a vocabulary with every model, drafts included: an EAGLE-3 draft's logits are sized by it (d2t
maps draft rows into it) and llama.cpp compares it with the target's (type, BOS/EOS, token texts) before it
speculates. So the draft GGUF carries the target's tokenizer: byte-level BPE (`tokenizer.ggml.model` "gpt2",
the family of Llama 3, Qwen, SmolLM and gpt-oss, the targets llama.cpp's eagle3 supports) with its tokens,
token types, merges, special ids and chat template.

`tokenizer.ggml.pre` names llama.cpp's pre-tokenizer regex. llama.cpp's converter finds it by hashing the
tokenizer's output against a table of known tokenizers; this writer has no such table and writes "default".
The draft never tokenizes text (it receives the target's token ids), so the name is never used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRE_TOKENIZER = "default"


@dataclass(frozen=True)
class MetaValue:
    """One GGUF metadata value and its GGUF type names (`sub_type` for arrays), e.g. ("UINT32", None)."""

    value: Any
    vtype: str
    sub_type: str | None = None


def _token_type_ids() -> dict[str, int]:
    import gguf

    return {"normal": int(gguf.TokenType.NORMAL), "control": int(gguf.TokenType.CONTROL),
            "user_defined": int(gguf.TokenType.USER_DEFINED), "unused": int(gguf.TokenType.UNUSED)}


def _check_byte_level_bpe(target_dir: Path) -> None:
    path = target_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{target_dir}: no tokenizer.json; the GGUF export writes byte-level BPE tokenizers "
                         "(Llama 3, Qwen, SmolLM, gpt-oss) from tokenizer.json")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ValueError(f"{path}: model.type {model.get('type')!r}, decoder.type {decoder.get('type')!r}: the GGUF "
                         "export writes byte-level BPE tokenizers only (model.type 'BPE' without byte_fallback, "
                         "decoder 'ByteLevel'); convert the vllm export with llama.cpp's convert_hf_to_gguf.py")


def _tokens_and_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts by id, padded to the model's `vocab_size` with unused [PAD{id}] rows, and their GGUF types:
    special added tokens are control tokens, other added tokens user-defined, the rest normal."""
    types = _token_type_ids()
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size or max(by_id) >= vocab_size:
        raise ValueError(f"the target's tokenizer has ids up to {max(by_id)}, beyond the model's vocab_size "
                         f"{vocab_size}: the draft's logits could not cover them")
    added = tokenizer.added_tokens_decoder
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            kinds.append(types["unused"])
            continue
        tokens.append(by_id[i])
        kind = "normal" if i not in added else ("control" if added[i].special else "user_defined")
        kinds.append(types[kind])
    return tokens, kinds


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _special_ids(special: Any) -> dict[str, MetaValue]:
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id",
             "sep": "seperator_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}  # llama.cpp's spelling
    return {f"tokenizer.ggml.{names[kind]}": MetaValue(int(i), "UINT32")
            for kind, i in special.special_token_ids.items() if kind in names}


def tokenizer_metadata(target_dir: str | os.PathLike, vocab_size: int) -> dict[str, MetaValue]:
    """The `tokenizer.*` GGUF keys of the target in `target_dir`, for a model of `vocab_size` token rows."""
    import gguf
    from transformers import AutoTokenizer

    target_dir = Path(target_dir)
    _check_byte_level_bpe(target_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    tokens, kinds = _tokens_and_types(tokenizer, vocab_size)
    special = gguf.SpecialVocab(target_dir, load_merges=True, n_vocab=vocab_size)
    meta = {
        "tokenizer.ggml.model": MetaValue("gpt2", "STRING"),
        "tokenizer.ggml.pre": MetaValue(PRE_TOKENIZER, "STRING"),
        "tokenizer.ggml.tokens": MetaValue(tokens, "ARRAY", "STRING"),
        "tokenizer.ggml.token_type": MetaValue(kinds, "ARRAY", "INT32"),
        "tokenizer.ggml.merges": MetaValue(list(special.merges), "ARRAY", "STRING"),
        **_special_ids(special),
        "tokenizer.ggml.add_bos_token": MetaValue(_adds_bos(tokenizer), "BOOL"),
    }
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        meta["tokenizer.chat_template"] = MetaValue(template, "STRING")
    return meta
