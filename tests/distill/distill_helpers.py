"""Helpers for the self-distillation tests: a chat template for stories260K, JSON Lines files, generators,
options and the unbatched greedy reference."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from fixtures import stories260k_tokenizer

from eaglespec.decoding import GenerationOptions, SpeculativeGenerator
from eaglespec.models import TargetModel

# A minimal chat template for stories260K's tokenizer (it ships none). Assistant turns end with EOS, a
# special token, so `prepare` can find where each answer ends.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_generator(model, tokenizer=None) -> SpeculativeGenerator:
    return SpeculativeGenerator(TargetModel(model), None, tokenizer or stories260k_tokenizer())


def options(temperature=0.0, max_new_tokens=24, seed=0) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def chat_tokenizer():
    tok = stories260k_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_by_id(path: Path) -> list[dict]:
    """The records of an output ordered by id (a run writes them in the order they complete)."""
    return sorted(read_jsonl(path), key=lambda r: str(r["id"]))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def greedy_reference(model, prompt: list[int], max_new_tokens: int, stop: int = 2) -> list[int]:
    """Unbatched greedy decoding without generate() or a cache: the reference for batched decoding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == stop:
                break
            ids.append(nxt)
    return ids[len(prompt):]


def chats(turns_per_chat: dict[str, int]) -> list[dict]:
    """Chats of several turns with user turns of different lengths, e.g. {"a": 2, "b": 1}."""
    out = []
    for n, (id, turns) in enumerate(turns_per_chat.items()):
        messages = []
        for t in range(turns):
            messages += [{"role": "user", "content": "Tell me a story" + " about a dog" * (n + t)},
                         {"role": "assistant", "content": "old"}]
        out.append({"id": id, "messages": messages})
    return out
