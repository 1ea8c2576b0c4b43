"""Shared helpers for the data tests: real tokenizers from ../shared, loaded once per session."""

from __future__ import annotations

import functools

import pytest

from paths import shared_path


@functools.lru_cache(maxsize=None)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def real_tokenizer():
    """real_tokenizer("qwen2.5") -> a fresh copy-free tokenizer from shared/tokenizers (skips when absent).
    Cached: tests must not mutate it (ChatEncoder with a template override sets chat_template; pass
    fresh=True for that)."""

    def load(name: str, fresh: bool = False):
        path = str(shared_path("tokenizers", name))
        if name == "llama3":
            pytest.importorskip("tiktoken", reason="the llama3 tokenizer.model needs tiktoken")
        if fresh:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path)
        return _load_tokenizer(path)

    return load


def trained_runs(input_ids: list[int], loss_mask: list[int]) -> list[list[int]]:
    """Token ids of every maximal run of loss_mask == 1."""
    runs: list[list[int]] = []
    previous = 0
    for token, m in zip(input_ids, loss_mask):
        if m and previous:
            runs[-1].append(token)
        elif m:
            runs.append([token])
        previous = m
    return runs


@pytest.fixture(scope="session")
def runs_of():
    return trained_runs


def decode_span(tokenizer, ids: list[int]) -> str:
    """Text of `ids` as it reads inside a longer sequence. SentencePiece decoding drops the leading space
    of a sequence's first piece ('▁▁▁▁for' decodes to 3 spaces), so decode after an anchor token and
    cut the anchor's text off again."""
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    head = tokenizer.decode(anchor, skip_special_tokens=False)
    text = tokenizer.decode(anchor + list(ids), skip_special_tokens=False)
    assert text.startswith(head)
    return text[len(head):]


@pytest.fixture(scope="session")
def decode_of():
    return decode_span
