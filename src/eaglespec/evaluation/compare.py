"""Speculative vs vanilla decoding on a list of prompts, side by side: tau, tokens/s and exactness."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from eaglespec.decoding import GenerationOutput, SpeculativeGenerator, sync


@dataclass
class PromptComparison:
    prompt: object  # text, ids or chat messages, as given
    speculative: GenerationOutput
    vanilla: GenerationOutput
    speculative_seconds: float
    vanilla_seconds: float

    @property
    def identical(self) -> bool:
        return self.speculative.token_ids == self.vanilla.token_ids


@dataclass
class ComparisonReport:
    results: list[PromptComparison]

    @property
    def new_tokens(self) -> int:
        return sum(r.speculative.stats.new_tokens for r in self.results)

    @property
    def tau(self) -> float:
        """New tokens / target forwards over all prompts (vanilla: 1.0)."""
        forwards = sum(r.speculative.stats.target_forwards for r in self.results)
        return self.new_tokens / forwards if forwards else 0.0

    @property
    def speculative_tokens_per_s(self) -> float:
        return self.new_tokens / max(sum(r.speculative_seconds for r in self.results), 1e-9)

    @property
    def vanilla_tokens_per_s(self) -> float:
        tokens = sum(r.vanilla.stats.new_tokens for r in self.results)
        return tokens / max(sum(r.vanilla_seconds for r in self.results), 1e-9)

    @property
    def speedup(self) -> float:
        return self.speculative_tokens_per_s / max(self.vanilla_tokens_per_s, 1e-9)

    @property
    def all_identical(self) -> bool:
        return all(r.identical for r in self.results)

    def to_dict(self) -> dict:
        return {
            "prompts": len(self.results), "new_tokens": self.new_tokens, "tau": self.tau,
            "speculative_tokens_per_s": self.speculative_tokens_per_s,
            "vanilla_tokens_per_s": self.vanilla_tokens_per_s, "speedup": self.speedup,
            "identical_to_vanilla": self.all_identical,
            "per_prompt_tau": [r.speculative.stats.tau for r in self.results],
        }


def _timed(fn, device: torch.device) -> tuple[GenerationOutput, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def compare_with_vanilla(generator: SpeculativeGenerator, prompts: list, max_new_tokens: int,
                         vanilla_first: bool = True, **sampling) -> ComparisonReport:
    """Decode every prompt speculatively and with the vanilla baseline, alternating which goes first per
    prompt (starting with vanilla when `vanilla_first`), so a noisy machine's slow phases hit both.
    With greedy settings (the default) the two outputs must be identical."""
    device = generator.target.device
    results = []
    for i, prompt in enumerate(prompts):
        runs = {}
        order = ("vanilla", "speculative") if (i % 2 == 0) == vanilla_first else ("speculative", "vanilla")
        for method in order:
            fn = generator.vanilla_generate if method == "vanilla" else generator.generate
            runs[method] = _timed(lambda: fn(prompt, max_new_tokens, **sampling), device)
        results.append(PromptComparison(prompt, runs["speculative"][0], runs["vanilla"][0],
                                        runs["speculative"][1], runs["vanilla"][1]))
    return ComparisonReport(results)
