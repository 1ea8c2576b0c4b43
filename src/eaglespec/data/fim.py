"""Fill-in-the-middle samples laid out exactly as the model sees them at inference, with its own FIM tokens.

Layouts (P, S, M = the FIM prefix / suffix / middle tokens, T = the terminator, [BOS] when the tokenizer
adds one to plain text):
    psm          [BOS] P prefix S suffix M middle T      (default; Qwen, StarCoder, DeepSeek, CodeLlama)
    spm          [BOS] P S suffix M prefix middle T      (the SPM variant StarCoder and CodeLlama were trained on)
    suffix-first [BOS] S suffix P prefix middle T        (Mistral / Codestral: no middle token)
Ids are the concatenation of per-segment ids, so the trained span (middle + T) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eaglespec.data.formats import FimExample, InvalidRecord, Record, parse_fim

FIM_ORDERS = ("psm", "spm")
SUFFIX_FIRST = "suffix-first"


@dataclass(frozen=True)
class FimFamily:
    """Token spellings of one family (several spellings: the first one in the vocabulary is used)."""

    name: str
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    middle: tuple[str, ...]
    terminator: tuple[str, ...]  # empty: the tokenizer's EOS
    order: str


FIM_FAMILIES = (
    # Qwen2.5-Coder ends an infill with <|endoftext|> (its base EOS; the instruct tokenizer's EOS is <|im_end|>).
    FimFamily("qwen", ("<|fim_prefix|>",), ("<|fim_suffix|>",), ("<|fim_middle|>",), ("<|endoftext|>",), "psm"),
    FimFamily("starcoder", ("<fim_prefix>",), ("<fim_suffix>",), ("<fim_middle>",), (), "psm"),
    FimFamily("deepseek", ("<｜fim▁begin｜>",), ("<｜fim▁hole｜>",), ("<｜fim▁end｜>",), (), "psm"),
    # CodeLlama's SentencePiece vocabulary spells them with a leading "▁"; the infill ends with <EOT>.
    FimFamily("codellama", ("▁<PRE>", "<PRE>"), ("▁<SUF>", "<SUF>"), ("▁<MID>", "<MID>"), ("▁<EOT>", "<EOT>"),
              "psm"),
    FimFamily("mistral", ("[PREFIX]",), ("[SUFFIX]",), ("[MIDDLE]",), (), SUFFIX_FIRST),
)


@dataclass(frozen=True)
class FimTokens:
    family: str
    prefix_id: int
    suffix_id: int
    middle_id: int | None  # None for the suffix-first layout
    terminator_id: int
    order: str  # "psm", "spm" or "suffix-first"
    bos_id: int | None  # prepended when the tokenizer adds BOS to plain text


def _first_present(spellings: tuple[str, ...], vocab: dict[str, int]) -> int | None:
    return next((vocab[s] for s in spellings if s in vocab), None)


def _bos_id(tokenizer: Any) -> int | None:
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None


def _eos_id(tokenizer: Any, name: str) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name} has no EOS token to end the FIM middle with; give a terminator as the 4th "
                         "entry of --fim-tokens")
    return tokenizer.eos_token_id


def detect_fim_tokens(tokenizer: Any, override: str | None = None, order: str | None = None,
                      tokenizer_name: str = "tokenizer") -> FimTokens:
    """The tokenizer's FIM tokens: `override` "PREFIX,SUFFIX,MIDDLE[,TERMINATOR]" or the first known family
    whose tokens are all in the vocabulary. `order` None = the family's own layout."""
    if order is not None and order not in FIM_ORDERS:
        raise ValueError(f"FIM order: expected one of {FIM_ORDERS}, got {order!r}")
    vocab = tokenizer.get_vocab()
    if override:
        return _override_tokens(tokenizer, vocab, override, order or "psm", tokenizer_name)
    for family in FIM_FAMILIES:
        ids = [_first_present(s, vocab) for s in (family.prefix, family.suffix, family.middle)]
        if None in ids:
            continue
        terminator = _first_present(family.terminator, vocab) if family.terminator else None
        return FimTokens(family.name, ids[0], ids[1], ids[2] if (order or family.order) != SUFFIX_FIRST else None,
                         terminator if terminator is not None else _eos_id(tokenizer, tokenizer_name),
                         order or family.order, _bos_id(tokenizer))
    known = "; ".join(f"{f.name} {f.prefix[0]} {f.suffix[0]} {f.middle[0]}" for f in FIM_FAMILIES)
    raise ValueError(f"{tokenizer_name} has no FIM tokens of a known family ({known}); name them with "
                     "--fim-tokens PREFIX,SUFFIX,MIDDLE[,TERMINATOR]")


def _override_tokens(tokenizer: Any, vocab: dict[str, int], override: str, order: str, name: str) -> FimTokens:
    parts = [p.strip() for p in override.split(",")]
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError(f"--fim-tokens: expected PREFIX,SUFFIX,MIDDLE[,TERMINATOR], got {override!r}")
    missing = [p for p in parts if p not in vocab]
    if missing:
        raise ValueError(f"--fim-tokens: {missing} not in the vocabulary of {name}")
    terminator = vocab[parts[3]] if len(parts) == 4 else _eos_id(tokenizer, name)
    return FimTokens("custom", vocab[parts[0]], vocab[parts[1]], vocab[parts[2]], terminator, order,
                     _bos_id(tokenizer))


def _segment(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def fim_prompt_ids(tokenizer: Any, prefix: str, suffix: str, fim: FimTokens | None = None) -> list[int]:
    """Everything before the middle: what the model is given at inference to generate the middle."""
    fim = fim or detect_fim_tokens(tokenizer)
    pre, suf = _segment(tokenizer, prefix), _segment(tokenizer, suffix)
    head = [fim.bos_id] if fim.bos_id is not None else []
    if fim.order == "psm":
        return head + [fim.prefix_id, *pre, fim.suffix_id, *suf, fim.middle_id]
    if fim.order == "spm":
        return head + [fim.prefix_id, fim.suffix_id, *suf, fim.middle_id, *pre]
    return head + [fim.suffix_id, *suf, fim.prefix_id, *pre]


def encode_fim(tokenizer: Any, example: FimExample, fim: FimTokens) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) [T]: the prompt untrained, middle + terminator trained."""
    prompt = fim_prompt_ids(tokenizer, example.prefix, example.suffix, fim)
    answer = _segment(tokenizer, example.middle) + [fim.terminator_id]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def parse_fim_record(record: dict, where: str) -> FimExample:
    """A FIM example from one raw JSON object (used by `regenerate`); errors name `where`."""
    if not isinstance(record, dict):
        raise InvalidRecord(f"{where}: expected a JSON object, got {type(record).__name__}")
    return parse_fim(Record(where, str(record.get("id", record.get("task_id", where))), record))
