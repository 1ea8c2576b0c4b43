"""`bench --methods vanilla,dflash` with a DFlash draft (issue 36): its row, exact against vanilla; EAGLE methods
with a DFlash draft, `dflash` with an EAGLE draft and `--tree auto` or `tune` with a DFlash draft are refused by name."""

from __future__ import annotations

import json

import pytest

from eaglespec.commands.bench import run_benchmark
from eaglespec.evaluation.benchmark import BenchOptions
from eaglespec.models import DFlashShape, TargetModel, build_draft, bundled_model_path


@pytest.fixture(scope="module")
def dflash_dir(tmp_path_factory):
    target = TargetModel.from_pretrained(str(bundled_model_path()))
    out = tmp_path_factory.mktemp("dflash") / "draft"
    build_draft(target, "dflash", seed=0, dflash=DFlashShape(block_size=4)).save_pretrained(out)
    return out


def _options(tmp_path, draft, methods, **kw) -> BenchOptions:
    (tmp_path / "p.txt").write_text("Once upon a time\nThe little cat\n")
    return BenchOptions(base="stories260K", draft=str(draft), questions=[str(tmp_path / "p.txt")], methods=methods,
                        max_new_tokens=12, repeats=1, output=str(tmp_path / "out"), **kw)


def test_bench_runs_a_dflash_draft_exactly(dflash_dir, tmp_path):
    assert run_benchmark(_options(tmp_path, dflash_dir, ["vanilla", "dflash"], lookup=4), log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["overall"]) == ["vanilla", "dflash"]
    assert data["exactness"]["dflash"]["counts"]["exact"] == 2


def test_bench_refuses_a_method_that_does_not_fit_the_draft(dflash_dir, tmp_path):
    with pytest.raises(ValueError, match=r"methods \['eagle-chain'\] do not run a dflash draft; with it use dflash"):
        run_benchmark(_options(tmp_path, dflash_dir, ["vanilla", "eagle-chain"]), log=lambda *_: None)
    with pytest.raises(ValueError, match="--tree auto tunes an EAGLE tree"):
        run_benchmark(_options(tmp_path, dflash_dir, ["vanilla", "dflash"], tree="auto"), log=lambda *_: None)
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.evaluation.tune import tune_tree

    with pytest.raises(ValueError, match="tune chooses EAGLE trees; a dflash draft"):
        tune_tree(SpeculativeGenerator.from_pretrained("stories260K", dflash_dir), ["Once upon a time"])
    target = TargetModel.from_pretrained(str(bundled_model_path()))
    eagle = tmp_path / "eagle"
    build_draft(target, "eagle3", seed=0).save_pretrained(eagle)
    with pytest.raises(ValueError, match=r"methods \['dflash'\] do not run a eagle3 draft"):
        run_benchmark(_options(tmp_path, eagle, ["vanilla", "dflash"]), log=lambda *_: None)
