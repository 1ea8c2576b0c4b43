"""The local engine: the target decodes prompts in one continuous batch (`SpeculativeGenerator.running_batch`,
vanilla). A row leaves the batch as soon as its completion ends and the next prompt takes its place; every
prompt samples from its own seed, so a record does not depend on which records share its batch."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from eaglespec.decoding import GenerationOptions, SpeculativeGenerator
from eaglespec.distill.jobs import Completion, JobPrompt


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation_config (chat models list their end-of-turn
    token there, e.g. <|im_end|> or <|eot_id|>), then BOS: a generated BOS starts another document, and
    llama2.c-style models (the bundled stories260K) end a text that way, never with EOS."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos, tokenizer.bos_token_id):
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    return ids


def stable_seed(seed: int, key: str) -> int:
    """A per-prompt seed that depends on the prompt's key (prompt index and record id), not on how many prompts
    ran before, so a resumed run draws the same samples as an uninterrupted one would."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prompt_options(options: GenerationOptions, prompt: JobPrompt, stop_ids: list[int]) -> GenerationOptions:
    """The options one prompt is decoded with: its own (or the run's), its stable seed and the stop tokens."""
    options = prompt.options or options
    if options.seed is None and options.temperature > 0:
        raise ValueError("regeneration samples from a seed (a resumed run must draw what an uninterrupted one "
                         "would); give one (--seed)")
    return replace(options, seed=stable_seed(options.seed or 0, prompt.seed_key), eos_token_id=tuple(stop_ids))


def cut_at_stop(token_ids: list[int], stop_ids: list[int], tokenizer: Any) -> Completion:
    """Cut before the first stop token; a completion without one hit max_new_tokens or the context."""
    for i, t in enumerate(token_ids):
        if t in stop_ids:
            return Completion(tokenizer.decode(token_ids[:i], skip_special_tokens=True), token_ids[:i], False)
    return Completion(tokenizer.decode(token_ids, skip_special_tokens=True), token_ids, hit_limit=True)


class LocalEngine:
    """Up to `max_batch_size` prompts decoded together by the target; `submit` between `collect` calls."""

    generated_by = None  # records of the local target carry no engine field (their format as before)

    def __init__(self, generator: SpeculativeGenerator, options: GenerationOptions, max_batch_size: int,
                 extra_stop_ids: tuple[int, ...] = ()):
        if max_batch_size < 1:
            raise ValueError(f"batch size: expected >= 1, got {max_batch_size}")
        self.generator, self.options, self.capacity = generator, options, max_batch_size
        self.stop_ids = stop_token_ids(generator.target.model, generator.tokenizer)
        self.stop_ids += [t for t in extra_stop_ids if t not in self.stop_ids]
        if not self.stop_ids:
            raise ValueError("neither the tokenizer nor the model's generation_config names an EOS token; "
                             "generation would never stop")
        self.batch = generator.running_batch(vanilla=True, max_batch_size=max_batch_size)
        self.keys: dict[int, Any] = {}  # request id in the running batch -> the caller's key

    @property
    def in_flight(self) -> int:
        return len(self.keys)

    def submit(self, key: Any, prompt: JobPrompt, record_id: str) -> None:
        """Queue `prompt` (its completion comes back from `collect` under `key`)."""
        options = prompt_options(self.options, prompt, self.stop_ids)
        try:
            request_id = self.batch.add(prompt.token_ids, options=options)
        except ValueError as e:
            raise ValueError(f"record {record_id!r}: {e}") from e
        self.keys[request_id] = key

    def collect(self) -> list[tuple[Any, Completion]]:
        """One batched decoding step (plus admissions) -> the completions it finished, with their keys."""
        done = []
        for event in self.batch.step():
            if event.finished:
                completion = cut_at_stop(event.output.token_ids, self.stop_ids, self.generator.tokenizer)
                done.append((self.keys.pop(event.request_id), completion))
        return done

    def close(self) -> None:
        """Drop what is still queued or running (nothing is written for it; a rerun does it again)."""
        for request_id in list(self.keys):
            self.batch.cancel(request_id)
        self.keys.clear()
