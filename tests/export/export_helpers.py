"""Helpers for the export tests: drafts with non-trivial weights saved to disk."""

from __future__ import annotations

import torch

from eaglespec.models import TargetModel, build_draft


def make_draft(target_dir, method, directory, draft_vocab_size=None, seed=0, **kwargs):
    """An untrained draft with non-trivial weights (random norms and fc bias) saved to `directory`."""
    target = load_target(target_dir)
    used = None
    if draft_vocab_size is not None:
        used = torch.sort(torch.randperm(target.vocab_size, generator=torch.Generator().manual_seed(seed))
                          [:draft_vocab_size]).values
    draft = build_draft(target, method, used_tokens=used, seed=seed, **kwargs)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in draft.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "fc.bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    draft.save_pretrained(directory)
    return directory


def load_target(target_dir):
    from transformers import AutoModelForCausalLM

    return TargetModel(AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval())
