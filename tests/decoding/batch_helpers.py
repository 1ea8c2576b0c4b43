"""Helpers for the batched decoding tests: varied prompts and an oracle draft that knows several sequences."""

from __future__ import annotations

import torch
from torch import nn

from eaglespec.models import draft_config_for

PROMPT_LENGTHS = (1, 17, 3, 40, 8, 26, 5, 12)  # different lengths; the first B make a batch of size B


def random_prompts(vocab: int, lengths, seed: int) -> list[torch.Tensor]:
    """BOS + random tokens, one [1, n] tensor per length."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([1]), torch.randint(3, vocab, (n - 1,), generator=g)])[None] for n in lengths]


class BatchOracleDraft(nn.Module):
    """A test-only draft that knows the target's greedy continuation of every row (`sequences`: prompt +
    greedy tokens). Fed token x at position t, it proposes s[t + 2] for the first sequence s with s[t + 1] = x
    (plus random lower-ranked proposals), so each row gets long accepted runs; where two sequences share a
    token at the same position it may propose the other row's token (a rejected proposal, never an error).
    Its 'hidden state' is the logits it wants to propose; EAGLE-1 shaped (full vocabulary)."""

    def __init__(self, target, sequences: list[list[int]], seed: int = 0):
        super().__init__()
        self.config = draft_config_for(target, "eagle1")
        self.vocab_size = target.vocab_size
        width = max(len(s) for s in sequences) + 2
        self.sequences = torch.full((len(sequences), width), -1, dtype=torch.long)
        for r, s in enumerate(sequences):
            self.sequences[r, : len(s)] = torch.tensor(s)
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)  # carries dtype / device
        self.generator = torch.Generator().manual_seed(seed)

    def project_target_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*features.shape[:2], self.vocab_size, device=features.device)

    def forward(self, input_ids, hidden_states, position_ids=None, attention_mask=None, cache=None):
        B, T = input_ids.shape
        logits = torch.randn(B, T, self.vocab_size, generator=self.generator).to(input_ids.device)
        sequences = self.sequences.to(input_ids.device)
        width = sequences.shape[1]
        pos = position_ids.expand(B, T).clamp(max=width - 3)
        match = sequences[:, pos + 1] == input_ids[None]  # [R, B, T]
        found = match.any(0)
        first = match.int().argmax(0)  # the first matching sequence
        proposal = sequences[first, pos + 2]
        on_path = found & (proposal >= 0)
        hit = torch.zeros_like(logits).scatter_(-1, proposal.clamp(min=0)[..., None], 20.0)
        return logits + hit * on_path[..., None]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def draft_to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids
