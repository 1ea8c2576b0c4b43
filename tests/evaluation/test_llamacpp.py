"""The llama-server wrapper bench uses, against a stand-in server: loopback only, stopped on exit and on errors,
a server that fails to start or dies mid-run is an error with its log, a missing binary names the build script."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from eaglespec.evaluation.llamacpp import HOST, LlamaCppMethod, LlamaServer, LlamaServerConfig
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


def test_method_counts_forwards_and_acceptance(fake_binary, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ok")
    with _server(fake_binary, draft=Path("d.gguf")) as server:
        method = LlamaCppMethod("llama.cpp-eagle3", server)
        run = method.run([1, 2, 3], 8, Sampling(), seed=0)
        assert run.token_ids == [3] * 8 and run.stats.target_forwards == 8 - 2 and not run.split_known
        assert method.acceptance == pytest.approx(2 / 3)
        with pytest.raises(ValueError, match="greedy only"):
            method.run([1], 4, Sampling(temperature=0.7), seed=0)
