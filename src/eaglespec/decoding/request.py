"""One decoding request, ready to run: prompt ids, sampling, stopping rule and RNG; and the prompt checks.

`Prompt` is what callers may pass (ids tensor / list of ids / text / chat messages); `encode_prompt` turns it into
input ids [1, n]; `check_prompt_length` is the one check that a prompt leaves room to generate (decoding and the
server both use it); `context_length` is the longest sequence a model decodes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.decoding.stopping import StopRule

Prompt = torch.Tensor | list[int] | str | list[dict]


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate within the model's context."""


@dataclass
class Request:
    input_ids: torch.Tensor  # [1, n] on the target device
    sampling: SamplingConfig
    stop: StopRule
    generator: torch.Generator  # this request's own RNG (sampling draws)


def context_length(config) -> int:
    """Longest sequence decoded exactly. Caches keep every position and the tree mask is full-causal, which
    equals sliding-window attention while the sequence fits the window, so windowed models stop there."""
    limit = int(getattr(config, "max_position_embeddings", None) or 2048)
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    windowed = "sliding_attention" in layer_types or (not layer_types and getattr(config, "use_sliding_window", True))
    if window and windowed:
        limit = min(limit, int(window))
    return limit


def check_prompt_length(num_tokens: int, context: int) -> None:
    """PromptTooLong unless a prompt of `num_tokens` leaves room for at least one new token in `context`."""
    if num_tokens >= context:
        raise PromptTooLong(f"prompt has {num_tokens} tokens; the model's context holds {context}, so at most "
                            f"{context - 1} prompt tokens leave room to generate")


def encode_prompt(tokenizer, prompt: Prompt) -> torch.Tensor:
    """ids tensor / list of ids / text / chat messages -> input ids [1, n] (n >= 1, on the CPU unless given)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
        ids = _tokenize(tokenizer, prompt)
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long)
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"batch size 1 only: expected input ids of shape [n] or [1, n], got {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("empty prompt: give at least one token (e.g. BOS)")
    return ids


def _tokenize(tokenizer, prompt: str | list[dict]) -> torch.Tensor:
    if tokenizer is None:
        raise ValueError("a text or chat prompt needs a tokenizer; pass token ids or give the generator one")
    if isinstance(prompt, str):
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template: pass the prompt as plain text instead")
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]
