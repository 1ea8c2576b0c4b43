"""Acceptance 4 with the reference's own code: PyPI eagle-llm (SafeAILab's package; its 1.2.1 release holds the
EAGLE-1 draft modules) loads our `eagle` export with strict=True and computes what our draft computes; a
checkpoint its own module writes imports into eaglespec, computes the same and decodes greedy-exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.export import export_draft, import_draft
from eaglespec.models import EagleDraftModel, TargetModel, build_draft, bundled_model_path

pytestmark = pytest.mark.interop
HERE = Path(__file__).resolve().parent
ATOL = 1e-5  # eager softmax attention there, SDPA here: fp32 rounding only


@pytest.mark.parametrize("fc_bias", [False, True])
def test_reference_eagle1_modules_agree(tmp_path, eagle_llm_python, fc_bias, one_thread):
    target_dir = str(bundled_model_path())  # RoPE theta 10000: eagle-llm 1.2.1 ignores rope_theta
    target = TargetModel.from_pretrained(target_dir, dtype=torch.float32)
    draft = build_draft(target, "eagle1", fc_bias=fc_bias, seed=2)
    draft.save_pretrained(tmp_path / "ours")
    export_draft(tmp_path / "ours", "eagle", tmp_path / "ours-eagle", target=target_dir)
    ids = torch.tensor([[1, 403, 29, 11, 287, 40, 9, 76, 301, 5, 17, 260]])
    features = target(ids).last_hidden
    next_ids = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    torch.save({"features": features, "ids": next_ids}, tmp_path / "inputs.pt")
    subprocess.run([str(eagle_llm_python), str(HERE / "reference_check.py"), str(tmp_path)], check=True,
                   stdout=sys.stdout, stderr=sys.stderr)
    result = torch.load(tmp_path / "result.pt")

    with torch.no_grad():
        ours = EagleDraftModel.from_pretrained(tmp_path / "ours", target=target)(next_ids, features)
    torch.testing.assert_close(result["ours_in_reference"], ours, atol=ATOL, rtol=0)

    import_draft("eagle", tmp_path / "reference-ckpt", target_dir, tmp_path / "imported")
    imported = EagleDraftModel.from_pretrained(tmp_path / "imported", target=target)
    with torch.no_grad():
        torch.testing.assert_close(result["reference_ckpt"], imported(next_ids, features), atol=ATOL, rtol=0)
    prompt = ids[:, :6]
    expected = target.model.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, 6:]
    out = SpeculativeGenerator(target, imported).generate(prompt, 24, eos_token_id=[])
    assert out.token_ids == expected.tolist()
