"""The llama-server wrapper bench uses, against a stand-in server: loopback only, stopped on exit and on errors,
a server that fails to start or dies mid-run is an error with its log, a missing binary names the build script;
llama.cpp's counters and drafter timings read as llama.cpp writes them; `bench` with the llama.cpp methods."""

from __future__ import annotations

import dataclasses
import json
import stat
import sys
from pathlib import Path

import pytest

from eaglespec.evaluation.llamacpp import (
    DFLASH_SPEC_TYPE,
    HOST,
    LlamaCppMethod,
    LlamaServer,
    LlamaServerConfig,
    SpecCounters,
    check_target_gguf,
    parse_draft_timing,
)
from eaglespec.evaluation.methods import Sampling

FAKE = Path(__file__).resolve().parent / "fake_llama_server.py"


@pytest.fixture
def fake_binary(tmp_path):
    path = tmp_path / "llama-server"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _server(binary, draft=None):
    return LlamaServer(LlamaServerConfig(binary, Path("target.gguf"), draft=draft, threads=1))


def test_completions_on_loopback_and_the_server_stops(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    with _server(fake_binary, draft=Path("draft.gguf")) as server:
        process = server._process
        assert server.config.command(server.port)[server.config.command(server.port).index("--host") + 1] == HOST
        c = server.complete([5, 6, 7], 4)
        assert c.tokens == [7, 7, 7, 7] and c.prompt_tokens == 3 and (c.draft_tokens, c.draft_accepted) == (3, 2)
    assert process.poll() is not None and not server.log_path.exists()  # a clean run leaves no log behind


def test_infill_sends_prefix_and_suffix_and_a_dflash_draft_its_spec_type(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    config = LlamaServerConfig(fake_binary, Path("target.gguf"), draft=Path("d.gguf"), spec_type=DFLASH_SPEC_TYPE,
                               draft_n_max=7, threads=1)
    assert config.command(1)[config.command(1).index("--spec-type") + 1] == "draft-dflash"
    assert config.command(1)[config.command(1).index("--spec-draft-n-max") + 1] == "7"
    with LlamaServer(config) as server:
        c = server.infill("def f(x):\n", "\n    return y\n", 4)
    assert c.tokens == [10, 14, 0, 0] and (c.draft_tokens, c.draft_accepted) == (3, 2)
    assert c.spec.steps == 1


def test_an_error_inside_stops_the_server(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    with pytest.raises(KeyboardInterrupt):
        with _server(fake_binary) as server:
            process = server._process
            raise KeyboardInterrupt
    assert process.poll() is not None and server.log_path.exists()  # kept for the error


def test_a_server_that_fails_to_start_shows_its_log(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "crash")
    with pytest.raises(RuntimeError, match=r"(?s)exited \(code 1\).*failed to load model"):
        with _server(fake_binary):
            pass


def test_a_server_that_dies_mid_run_is_an_error_with_its_log(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "die")
    with _server(fake_binary) as server:
        with pytest.raises(RuntimeError, match=r"(?s)exited.*GGML_ASSERT failed"):
            server.complete([1, 2], 4)


def test_a_missing_binary_names_the_build_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_envs.sh llama.cpp"):
        _server(tmp_path / "nowhere" / "llama-server").start()


def test_method_counts_forwards_acceptance_by_position_and_draft_time(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    with _server(fake_binary, draft=Path("d.gguf")) as server:
        method = LlamaCppMethod("llama.cpp-eagle3", server)
        for _ in range(2):  # the second request's counters are its own, not the server's totals
            run = method.run([1, 2, 3], 8, Sampling(), seed=0)
            assert run.token_ids == [3] * 8 and run.stats.target_forwards == 8 - 2 and not run.split_known
            # one step that accepted positions 0 and 1 of a chain of 3
            assert run.stats.accept_lengths == [2] and run.stats.acceptance_rate_per_depth == [1.0, 1.0, 0.0]
        assert method.acceptance == pytest.approx(2 / 3)
        figures = method.engine_figures()
        assert figures["draft_calls"] == 2 and figures["draft_ms_per_call"] == pytest.approx(4.0)
        assert figures["decode_ms_per_forward"] == pytest.approx(2 * 2.0 / (2 * 5)) and "-md" in figures["command"]
        with pytest.raises(ValueError, match="greedy only"):
            method.run([1], 4, Sampling(temperature=0.7), seed=0)


def test_spec_counters_give_one_requests_steps_by_accepted_length():
    before, after = SpecCounters(4, (3, 1)), SpecCounters(14, (9, 4, 1))  # a position seen for the first time
    one = after.minus(before)
    assert one == SpecCounters(10, (6, 3, 1))
    assert one.accept_length_counts() == [4, 3, 2, 1]  # 0, 1, 2 and 3 accepted: 10 steps, 6 + 3 + 1 accepted tokens


def test_drafter_timing_is_read_from_the_last_statistics_line():
    log = ("spec common_specu: statistics     draft-eagle3: #calls(b,g,a) =    1     10     10, #gen drafts = 1, "
           "#acc drafts = 1, #gen tokens = 3, #acc tokens = 2, dur(b,g,a) = 0.003, 20.500, 0.100 ms\n"
           "spec common_specu: statistics     draft-eagle3: #calls(b,g,a) =    2     30     30, #gen drafts = 1, "
           "#acc drafts = 1, #gen tokens = 3, #acc tokens = 2, dur(b,g,a) = 0.006, 75.000, 0.300 ms\n")
    timing = parse_draft_timing(log)
    assert (timing.calls, timing.ms, timing.ms_per_call) == (30, 75.0, 2.5)
    dflash = log.replace("draft-eagle3", "draft-dflash")  # llama.cpp names the drafter the same way
    assert parse_draft_timing(dflash) == timing
    assert parse_draft_timing("no drafting yet") is None


def write_vocab_gguf(path: Path, tokens: list[str], arch: str = "llama") -> Path:
    """A GGUF holding only a tokenizer's token list (what bench checks of the target GGUF)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_target_gguf_is_checked_before_any_server_starts(tmp_path):
    with pytest.raises(ValueError, match="--gguf-target FILE"):
        check_target_gguf(None, ["a"])
    with pytest.raises(FileNotFoundError, match="--gguf-target .*nowhere.gguf: no such file"):
        check_target_gguf(str(tmp_path / "nowhere.gguf"), ["a"])
    (tmp_path / "text.gguf").write_text("not a gguf")
    with pytest.raises(ValueError, match="text.gguf: not a readable GGUF"):
        check_target_gguf(str(tmp_path / "text.gguf"), ["a"])
    other = write_vocab_gguf(tmp_path / "other.gguf", ["<s>", "a", "c"])
    with pytest.raises(ValueError, match="vocabulary differs.*first difference at id 2"):
        check_target_gguf(str(other), ["<s>", "a", "b"])
    padded = write_vocab_gguf(tmp_path / "padded.gguf", ["<s>", "a", "b", "[PAD3]"])
    assert check_target_gguf(str(padded), ["<s>", "a", "b"]) == padded


def test_bench_runs_llama_cpp_beside_our_methods(fake_binary, monkeypatch, tmp_path):
    """`bench --methods vanilla,llama.cpp,llama.cpp-eagle3`: llama.cpp's rows in results.json and report.md, the
    drafted run judged against llama.cpp's own (not ours), its speedup over llama.cpp, the servers stopped."""
    from transformers import AutoTokenizer

    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions, vocabulary
    from eaglespec.models import bundled_model_path

    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    target = write_vocab_gguf(tmp_path / "t.gguf", vocabulary(AutoTokenizer.from_pretrained(str(bundled_model_path()))))
    (tmp_path / "p.txt").write_text("Once upon a time\nThe little cat\n")
    opts = BenchOptions(base="stories260K", questions=[str(tmp_path / "p.txt")],
                        methods=["vanilla", "llama.cpp", "llama.cpp-eagle3", "llama.cpp-eagle3:n2:p0.5"],
                        max_new_tokens=6, repeats=1,
                        output=str(tmp_path / "out"), gguf_target=str(target), gguf_draft=str(target),
                        llama_server=str(fake_binary), llama_threads=1, llama_flash_attn="off")
    assert run_benchmark(opts, log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["overall"]) == ["vanilla", "llama.cpp", "llama.cpp-eagle3", "llama.cpp-eagle3:n2:p0.5"]
    variant = data["llama_cpp"]["llama.cpp-eagle3:n2:p0.5"]["command"]
    assert "--spec-draft-n-max 2 --spec-draft-p-min 0.5" in variant
    assert "--spec-draft-n-max 3 --spec-draft-p-min 0.0" in data["llama_cpp"]["llama.cpp-eagle3"]["command"]
    assert all(" -fa off " in data["llama_cpp"][m]["command"] for m in data["llama_cpp"])  # one kernel for all
    assert data["exactness"]["llama.cpp-eagle3:n2:p0.5"]["counts"]["exact"] == 2
    drafted = data["overall"]["llama.cpp-eagle3"]
    assert drafted["tau"] == pytest.approx(6 / 4) and drafted["acceptance_by_depth"] == [1.0, 1.0, 0.0]
    assert drafted["speedup_vs_llama_cpp"] > 0 and data["overall"]["llama.cpp"]["speedup_vs_llama_cpp"] == 1.0
    assert data["overall"]["llama.cpp"]["tau"] == 1.0 and data["overall"]["llama.cpp"]["acceptance_by_depth"] == []
    assert data["exactness"]["llama.cpp-eagle3"]["counts"]["exact"] == 2 and "llama.cpp" not in data["exactness"]
    assert data["llama_cpp"]["llama.cpp-eagle3"]["draft_calls"] >= 2
    assert "llama.cpp-eagle3" in (tmp_path / "out" / "report.md").read_text()


def test_bench_runs_an_eagle_and_a_dflash_draft_in_llama_cpp_in_one_run(fake_binary, tmp_path, monkeypatch):
    """--gguf-draft with two drafts: each llama.cpp method gets the draft of its kind (read from the GGUF's
    architecture) and its --spec-type; two drafts of one kind are refused, naming both."""
    from transformers import AutoTokenizer

    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions, vocabulary
    from eaglespec.models import bundled_model_path

    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    tokens = vocabulary(AutoTokenizer.from_pretrained(str(bundled_model_path())))
    target = write_vocab_gguf(tmp_path / "t.gguf", tokens)
    dflash = write_vocab_gguf(tmp_path / "d.gguf", tokens, arch="dflash")
    (tmp_path / "p.txt").write_text("Once upon a time\n")
    opts = BenchOptions(base="stories260K", questions=[str(tmp_path / "p.txt")],
                        methods=["llama.cpp", "llama.cpp-eagle3", "llama.cpp-dflash:n7"], max_new_tokens=6, repeats=1,
                        output=str(tmp_path / "out"), gguf_target=str(target), gguf_draft=[str(dflash), str(target)],
                        llama_server=str(fake_binary), llama_threads=1)
    assert run_benchmark(opts, log=lambda *_: None) == 0
    commands = {m: f["command"] for m, f in json.loads((tmp_path / "out" / "results.json").read_text())["llama_cpp"].items()}
    assert f"-md {target} --spec-type draft-eagle3 " in commands["llama.cpp-eagle3"]
    assert f"-md {dflash} --spec-type draft-dflash --spec-draft-n-max 7 " in commands["llama.cpp-dflash:n7"]
    with pytest.raises(ValueError, match=f"--gguf-draft: two dflash drafts \\({dflash}, {dflash}\\)"):
        run_benchmark(dataclasses.replace(opts, gguf_draft=[str(dflash), str(dflash)]), log=lambda *_: None)
    with pytest.raises(ValueError, match=r"methods \['llama.cpp-dflash:n7'\] need our draft: --draft DIR"):
        run_benchmark(dataclasses.replace(opts, gguf_draft=str(target)), log=lambda *_: None)


def test_bench_refuses_llama_cpp_without_a_target_gguf(tmp_path):
    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions

    (tmp_path / "p.txt").write_text("Once upon a time\n")
    opts = BenchOptions(base="stories260K", questions=[str(tmp_path / "p.txt")], methods=["vanilla", "llama.cpp"],
                        output=str(tmp_path / "out"), llama_server=sys.executable)
    with pytest.raises(ValueError, match="--gguf-target FILE"):
        run_benchmark(opts, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"methods \[.llama.cpp-eagle3.\] need our draft: --draft DIR \(exported"):
        run_benchmark(BenchOptions(base="stories260K", questions=[str(tmp_path / "p.txt")],
                                   methods=["llama.cpp-eagle3"]), log=lambda *_: None)


def test_llama_cpp_method_names_carry_their_own_chain_flags():
    from eaglespec.evaluation.methods import LlamaCppVariant, exactness_reference, llama_cpp_variant

    assert llama_cpp_variant("llama.cpp") == LlamaCppVariant(drafted=False)
    assert llama_cpp_variant("llama.cpp-eagle3") == LlamaCppVariant(True)
    assert llama_cpp_variant("llama.cpp-eagle3:n2:p0.5") == LlamaCppVariant(True, 2, 0.5)
    assert llama_cpp_variant("llama.cpp-dflash:n7") == LlamaCppVariant(True, 7, None, "dflash")
    assert llama_cpp_variant("eagle-chain") is None
    assert [exactness_reference(m) for m in ("eagle", "llama.cpp", "llama.cpp-eagle3:p0.3")] == ["vanilla", None,
                                                                                                "llama.cpp"]
    for bad in ("llama.cpp-eagle3:x3", "llama.cpp-eagle3:n0", "llama.cpp-eagle3:p1.5", "llama.cpp-eagle3:nfour"):
        with pytest.raises(ValueError, match="is neither nN .* nor pP"):
            llama_cpp_variant(bad)


def test_a_method_whose_reference_is_missing_is_noted():
    """Exactness needs the reference's answers: llama.cpp-eagle3 without llama.cpp, eagle without vanilla."""
    from eaglespec.evaluation.bench import BenchSetup
    from eaglespec.evaluation.benchmark import setup_notes
    from eaglespec.evaluation.questions import Question, QuestionSet

    class Named:
        def __init__(self, name):
            self.name = name

    class Gen:
        tokenizer = type("T", (), {"chat_template": "x"})()

    questions = QuestionSet([Question("q1", "c", "completion", ["hi"])])
    setup = BenchSetup(Gen(), questions, [Named("llama.cpp-eagle3"), Named("eagle")], 4, 1, Sampling())
    notes = setup_notes(setup)
    assert any("llama.cpp-eagle3's answers are checked against llama.cpp's" in n for n in notes)
    assert any("eagle's answers are checked against vanilla's" in n for n in notes)
    setup.methods = [Named("vanilla"), Named("llama.cpp"), Named("llama.cpp-eagle3")]
    assert setup_notes(setup) == []
