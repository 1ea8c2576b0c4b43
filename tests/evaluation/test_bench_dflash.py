"""`bench --methods vanilla,dflash` with a DFlash draft (issue 36): its row, exact against vanilla; EAGLE methods
with a DFlash draft and `dflash` with an EAGLE draft are refused by name; `--tree auto` chooses the chain length."""

from __future__ import annotations

import json

import pytest

from eaglespec.commands.bench import run_benchmark
from eaglespec.evaluation.benchmark import BenchOptions
from eaglespec.models import DFlashShape, TargetModel, build_draft, bundled_model_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dflash_dir(tmp_path_factory):
    target = TargetModel.from_pretrained(str(bundled_model_path()))
    out = tmp_path_factory.mktemp("dflash") / "draft"
    build_draft(target, "dflash", seed=0, dflash=DFlashShape(block_size=4)).save_pretrained(out)
    return out


def _options(tmp_path, draft, methods, max_new_tokens=12, **kw) -> BenchOptions:
    (tmp_path / "p.txt").write_text("Once upon a time\nThe little cat\n")
    draft = [str(d) for d in draft] if isinstance(draft, list) else str(draft)
    return BenchOptions(base="stories260K", draft=draft, questions=[str(tmp_path / "p.txt")], methods=methods,
                        max_new_tokens=max_new_tokens, repeats=1, output=str(tmp_path / "out"), **kw)


def test_bench_runs_a_dflash_draft_exactly(dflash_dir, tmp_path):
    assert run_benchmark(_options(tmp_path, dflash_dir, ["vanilla", "dflash"], lookup=4), log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["overall"]) == ["vanilla", "dflash"]
    assert data["exactness"]["dflash"]["counts"]["exact"] == 2


def test_bench_refuses_a_method_that_does_not_fit_the_draft(dflash_dir, tmp_path):
    with pytest.raises(ValueError, match=r"methods \['eagle-chain'\] do not run a dflash draft; with it use dflash"):
        run_benchmark(_options(tmp_path, dflash_dir, ["vanilla", "eagle-chain"]), log=lambda *_: None)
    target = TargetModel.from_pretrained(str(bundled_model_path()))
    eagle = tmp_path / "eagle"
    build_draft(target, "eagle3", seed=0).save_pretrained(eagle)
    with pytest.raises(ValueError, match=r"methods \['dflash'\] do not run a eagle3 draft"):
        run_benchmark(_options(tmp_path, eagle, ["vanilla", "dflash"]), log=lambda *_: None)



def test_bench_compares_an_eagle_and_a_dflash_draft_in_one_run(dflash_dir, tmp_path):
    """--draft EAGLE DFLASH: the eagle methods run the EAGLE draft and dflash the DFlash one, on one target, in the
    same interleaved rounds, both exact; results.json records both drafts' drafting; two drafts of a kind are refused."""
    target = TargetModel.from_pretrained(str(bundled_model_path()))
    eagle = tmp_path / "eagle"
    build_draft(target, "eagle3", seed=0).save_pretrained(eagle)
    opts = _options(tmp_path, [str(eagle), str(dflash_dir)], ["vanilla", "eagle-chain", "dflash"])
    assert run_benchmark(opts, log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["overall"]) == ["vanilla", "eagle-chain", "dflash"]
    assert all(data["exactness"][m]["counts"]["exact"] == 2 for m in ("eagle-chain", "dflash"))
    assert data["dflash_block"]["kind"] == "block" and data["dflash_block"]["block_size"] == 4
    assert data["tree"]["kind"] == "dynamic"
    with pytest.raises(ValueError, match=r"--draft: two dflash drafts"):
        run_benchmark(_options(tmp_path, [str(dflash_dir), str(dflash_dir)], ["dflash"]), log=lambda *_: None)


def test_tree_auto_tunes_a_dflash_drafts_chain_length(dflash_dir, tmp_path, monkeypatch):
    """--tree auto with a DFlash draft: tune picks the chain length (here in-process, with a short calibration;
    bench runs the same call in a child process), the generator uses it, results.json records it, and the measured
    dflash figure is put next to the prediction."""
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.evaluation import benchmark, tune, tune_cost
    from eaglespec.evaluation.questions import load_question_set

    monkeypatch.setattr(tune_cost, "FORWARD_REPEATS", 1)
    monkeypatch.setattr(tune, "LOOKUP_TOKENS", (0, 4))
    opts = _options(tmp_path, dflash_dir, ["vanilla", "dflash"], tree="auto", max_new_tokens=16)
    gen = SpeculativeGenerator.from_pretrained("stories260K", dflash_dir)
    tuned, result = benchmark.tune_for_workload(gen, opts, load_question_set(opts.questions), None,
                                                log=lambda *_: None)
    choice = result["choice"]
    assert choice["kind"] == "chain" and 1 <= choice["depth"] <= 3 and tuned.drafter.depth == choice["depth"]
    assert benchmark.drafting_summary(tuned) == {"kind": "block", "block_size": 4, "depth": choice["depth"],
                                                 **({"lookup": choice["lookup"]} if choice.get("lookup") else {})}
    benchmark.check_prediction(result, {"vanilla": {"tokens_per_s": 10.0}, "dflash": {"tokens_per_s": 20.0, "tau": 2}})
    assert result["measured_tokens_per_s"] == 20.0 and result["measured_tau"] == 2
