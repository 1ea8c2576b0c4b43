"""Shared helpers for the decoding tests: greedy references with explicit tie detection, an oracle draft."""

from __future__ import annotations

import torch
from torch import nn

from eaglespec.models import draft_config_for

TIE_TOLERANCE = 1e-4  # fp32 logits closer than this make either argmax a correct greedy choice

# Real story beginnings (TinyStories style) for stories260K.
STORY_PROMPTS = [
    "Once upon a time, there was a little girl named Lily.",
    "One day, a big dog went to the park.",
    "Tom and Sue were playing in the garden.",
    "There was a small bird who lived in a tree.",
    "Once upon a time",
    "The sun was shining and",
    "Mom said, \"Let's go to the store.\"",
    "Ben had a red ball. He liked to throw it high.",
    "Once upon a time, in a small house, there lived a cat named Tom. Tom liked to sleep all day.",
    "Lily saw a big box in her room.",
    "The little boy wanted to play with his toy car, but it was broken.",
    "Sam was sad.",
    "A long time ago, there was a happy frog. The frog liked to jump and swim in the pond every day.",
    "Anna and her mom baked a cake.",
    "The bear was very hungry. He looked for food in the forest.",
    "Tim found a shiny rock.",
    "It was a rainy day. Sara could not go outside, so she",
    "Once there was a kind old man who had a garden full of flowers.",
    "The cat and the dog were friends.",
    "Max wanted to fly like a bird. Every day he",
    "Once upon a time, there was a big, brave lion.",
    "She",
]


def greedy_reference(model, ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> list[int]:
    kwargs = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=0, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def count_tie_or_fail(model, ids: torch.Tensor, expected: list[int], got: list[int]) -> int:
    """0 if equal; 1 if they first differ at a numerical tie (target logits of both tokens within
    TIE_TOLERANCE); otherwise an AssertionError naming the position."""
    if expected == got:
        return 0
    i = next((j for j, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    assert i < len(expected) and i < len(got), f"lengths differ with equal prefix: {expected} vs {got}"
    prefix = torch.cat([ids[0], torch.tensor(expected[:i], dtype=torch.long, device=ids.device)])[None]
    with torch.no_grad():
        logits = model(prefix).logits[0, -1]
    gap = float((logits[expected[i]] - logits[got[i]]).abs())
    assert gap < TIE_TOLERANCE, (
        f"first difference at new token {i}: expected {expected[i]}, got {got[i]}, logit gap {gap:.2e}\n"
        f"expected {expected}\ngot      {got}")
    return 1


class OracleDraft(nn.Module):
    """A test-only draft whose top proposal is the target's own greedy continuation `sequence` (prompt +
    greedy tokens) whenever its input token is on that sequence, plus random lower-ranked proposals.

    It honours the draft interface the generator uses (EAGLE-1 shaped: full vocabulary, identity id map);
    its 'hidden state' is simply the logits it wants to propose.
    """

    def __init__(self, target, sequence: list[int], seed: int = 0):
        super().__init__()
        self.config = draft_config_for(target, "eagle1")
        self.vocab_size = target.vocab_size
        self.sequence = torch.tensor(sequence)
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)  # carries dtype / device
        self.generator = torch.Generator().manual_seed(seed)

    def project_target_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*features.shape[:2], self.vocab_size, device=features.device)

    def forward(self, input_ids, hidden_states, position_ids=None, attention_mask=None, cache=None):
        B, T = input_ids.shape
        logits = torch.randn(B, T, self.vocab_size, generator=self.generator).to(input_ids.device)
        pos = position_ids.expand(B, T)
        seq = self.sequence.to(input_ids.device)
        on_path = (pos + 2 < len(seq)) & (input_ids == seq[(pos + 1).clamp(max=len(seq) - 1)])
        target_tokens = seq[(pos + 2).clamp(max=len(seq) - 1)]
        hit = torch.zeros_like(logits).scatter_(-1, target_tokens[..., None], 20.0)
        return logits + hit * on_path[..., None]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def draft_to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids
