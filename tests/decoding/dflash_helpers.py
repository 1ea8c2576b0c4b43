"""A DFlash draft that gets blocks accepted, for the decoding tests and the reference interop test."""

from __future__ import annotations

import functools

import torch
from decoding_helpers import STORY_PROMPTS, greedy_reference
from fixtures import stories260k, stories260k_tokenizer

from eaglespec.models import DFlashShape, TargetModel, build_draft


@functools.lru_cache(maxsize=2)
def fitted_stories_dflash(block_size: int = 5, steps: int = 120):
    """(stories260K model, its TargetModel, a DFlash draft, tokenizer, the story prompts' ids): the draft fitted
    for a few seconds to the target's own greedy continuations of the story prompts, so that verification accepts
    long runs and every cache path is exercised. Cached: the test modules that use it share one fit; none of
    them changes the draft. It runs single-threaded: module fixtures start before a test's `one_thread`, and
    with two threads on a busy 2-core machine the fit took 211 s instead of seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(block_size, steps)
    finally:
        torch.set_num_threads(threads)


def _fit(block_size: int, steps: int):
    from eaglespec.training.data import TargetBatch
    from eaglespec.training.dflash import DFlashMethod

    model, tok = stories260k(), stories260k_tokenizer()
    target = TargetModel(model)
    draft = build_draft(target, "dflash", seed=0, dflash=DFlashShape(block_size=block_size))
    prompts = [tok(t, return_tensors="pt")["input_ids"] for t in STORY_PROMPTS[:8]]
    rows = [torch.cat([p[0], torch.tensor(greedy_reference(model, p, 48))]) for p in prompts]
    T = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r.new_zeros(T - len(r))]) for r in rows])
    valid = torch.stack([torch.arange(T) < len(r) for r in rows])
    with torch.no_grad():
        out = target(ids, attention_mask=valid.long(), aux_layer_ids=draft.config.aux_layer_ids)
    batch = TargetBatch(ids, valid.long(), valid, out.aux_hidden.float(), out.last_hidden.float(), out.logits.float())
    method = DFlashMethod(block_size, num_anchors=32, seed=0)
    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        loss = method.train_step(draft, draft, batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, target, draft.eval(), tok, prompts
