"""Training on a CUDA device (run with `pytest -m gpu`; skipped without CUDA): with the defaults there (bf16 target,
bf16 autocast) the loss falls, and the saved draft decodes on the GPU."""

from __future__ import annotations

import pytest
import torch
from fixtures import read_metrics, train_config

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.training import Eagle1TrainConfig, Eagle3TrainConfig, train_eagle1, train_eagle3

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_training_on_cuda_lowers_the_loss_and_the_draft_decodes_there(tmp_path, tiny_prepared, method):
    common = train_config(tmp_path / "run", num_epochs=6, lr=3e-3)
    result = (train_eagle3(Eagle3TrainConfig(common, data=tiny_prepared, ttt_length=3)) if method == "eagle3"
              else train_eagle1(Eagle1TrainConfig(common, data=tiny_prepared)))
    train = [m for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert train[-1]["ploss"][0] < 0.8 * train[0]["ploss"][0], [m["ploss"][0] for m in train]
    gen = SpeculativeGenerator.from_pretrained("stories260K", result.last_checkpoint, dtype="bfloat16",
                                               device="cuda")
    assert gen.target.device.type == "cuda" and next(gen.draft.parameters()).device.type == "cuda"
    out = gen.generate("Once upon a time", 32, eos_token_id=-1)
    assert len(out.token_ids) == 32 and out.stats.tau > 1.0
