"""`eaglespec bench` on a CUDA device (run with `pytest -m gpu`; skipped without CUDA): fp32 exact for every
greedy method, bf16 differences classified with none a MISMATCH, `--tree auto` tuned on the GPU (in its child
process), the GPU named in results.json."""

from __future__ import annotations

import json

import pytest
import torch

from eaglespec.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("no_tf32")]

METHODS = "vanilla,hf,eagle,eagle-chain,pld"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_on_cuda_classifies_every_difference(tmp_path, dtype):
    draft = tmp_path / "draft"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("Once upon a time\nThe little cat\nTom and Lily went to the park.\nSam was sad.\n")
    out = tmp_path / "out"
    argv = ["bench", "--base", "stories260K", "--draft", str(draft), "--questions", str(prompts), "--methods",
            METHODS, "--max-new-tokens", "48", "--repeats", "1", "--device", "cuda", "--dtype", dtype,
            "--output", str(out)]
    assert main(argv + (["--tree", "auto"] if dtype == "bfloat16" else [])) == 0  # non-zero on any MISMATCH
    result = json.loads((out / "results.json").read_text())
    assert result["complete"] and result["machine"]["device"].startswith("cuda") and result["machine"]["gpu"]
    for method in ("hf", "eagle", "eagle-chain", "pld"):
        counts = result["exactness"][method]["counts"]
        assert counts["MISMATCH"] == 0 and sum(counts.values()) == 4
        if dtype == "float32":
            assert counts["exact"] == 4, (method, result["exactness"][method])
    if dtype == "bfloat16":
        assert result["tune"]["choice"] and result["tune"]["predicted_tokens_per_s"] > 0
    assert (out / "report.md").exists() and list(out.glob("*.png"))
