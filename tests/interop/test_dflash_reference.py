"""Issue 36 against the reference's own code: z-lab's `DFlashDraftModel` (dflash/model.py of github.com/z-lab/dflash,
not vendored: give its path in EAGLESPEC_ZLAB_DFLASH) loads our `export --format vllm` (z-lab's layout) and
computes the same block logits as our drafter, and its own `dflash_generate` decodes the same tokens with the same
acceptance at every step as our decoder (stories260K and a DFlash draft fitted to it, fp32).

z-lab's code is written for transformers 4: its draft cache is cropped TO a length, which transformers 5's
`DynamicCache.crop` refuses, so the test gives it that meaning (our `truncate`); its timer calls CUDA only for
statistics, so the test gives it a CPU clock."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.decoding.block_drafter import BlockDrafter
from eaglespec.decoding.cache import truncate
from eaglespec.export import export_draft

pytestmark = pytest.mark.interop
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "decoding"))  # dflash_helpers, decoding_helpers
REFERENCE = os.environ.get("EAGLESPEC_ZLAB_DFLASH")


@pytest.fixture(scope="module")
def zlab(monkeypatch_module):
    if not REFERENCE or not Path(REFERENCE).is_file():
        pytest.skip("set EAGLESPEC_ZLAB_DFLASH to z-lab/dflash's dflash/model.py (e.g. from a git clone)")
    from transformers import DynamicCache

    spec = importlib.util.spec_from_file_location("zlab_dflash", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch_module.setattr(module, "_cuda_time", time.perf_counter)
    monkeypatch_module.setattr(DynamicCache, "crop", lambda self, length: truncate(self, length))
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from dflash_helpers import fitted_stories_dflash

    model, target, draft, tok, prompts = fitted_stories_dflash()
    out = tmp_path_factory.mktemp("dflash")
    draft.save_pretrained(out / "ours")
    export_draft(out / "ours", "vllm", out / "zlab", dtype="float32")
    return model, tok, prompts, out


def test_zlab_reference_decodes_our_export_as_we_do(zlab, fitted):
    model, tok, prompts, out = fitted
    reference = zlab.DFlashDraftModel.from_pretrained(str(out / "zlab"), dtype=torch.float32,
                                                      attn_implementation="sdpa").eval()
    gen = SpeculativeGenerator.from_pretrained("stories260K", out / "ours", dtype="float32")
    accepted = 0
    for ids in prompts:
        theirs = zlab.dflash_generate(reference, model, ids, 40, None, 0.0, return_stats=True)
        ours = gen.generate(ids, 40, eos_token_id=[])
        assert ours.token_ids == theirs.output_ids[0, ids.shape[1]:].tolist()[: len(ours.token_ids)]
        steps = [a + 1 for a in ours.stats.accept_lengths]
        assert theirs.acceptance_lengths[: len(steps)] == steps
        accepted += sum(ours.stats.accept_lengths)
    assert accepted > 40  # blocks were accepted, so the comparison covers more than the first slot

    text = "Once upon a time, there was a little girl named Lily. She loved to play"
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        features = zlab.extract_context_feature(model(ids, output_hidden_states=True).hidden_states,
                                                reference.target_layer_ids)
        drafter, done = BlockDrafter(gen.draft), 0
        for P in (3, 7, 12, ids.shape[1] - 1):
            block = torch.full((1, reference.block_size), reference.mask_token_id)
            block[0, 0] = ids[0, P]
            hidden = reference(position_ids=torch.arange(P + reference.block_size)[None], is_causal=False,
                               noise_embedding=model.model.embed_tokens(block), target_hidden=features[:, :P])
            theirs = model.lm_head(hidden[:, 1 - reference.block_size:])[0]
            drafter.catch_up(ids[:, done + 1:P + 1], features[:, done:P])
            done = P
            torch.testing.assert_close(drafter.block_logits(int(ids[0, P]), drafter.depth), theirs, atol=1e-5, rtol=0)
