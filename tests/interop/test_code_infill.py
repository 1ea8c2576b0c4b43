"""llama-server's /infill (the pinned build) serves the code model with its committed EAGLE-3 draft, both as F32
GGUFs (recipes/code/infill_llamacpp.py): on 20 held-out infilling prompts the middles with the draft equal those
without it token for token, llama.cpp's middle equals our own fp32 greedy middle (so /infill lays the FIM prompt
out as we do), and the draft is accepted (issue 37, check 3)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop
RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "code"
sys.path.insert(0, str(RECIPE_DIR))

import fim_samples  # noqa: E402
import infill_llamacpp  # noqa: E402

COUNT = 20
MIN_ACCEPTANCE = 0.3  # of drafted tokens (a draft llama.cpp computed wrongly accepts almost nothing)
# One llama.cpp thread: on a shared 2-core machine its threads spin at barriers waiting for a descheduled one (see
# test_llamacpp.THREADS); with pytest or anything else running, two threads made this run minutes long.


def test_infill_with_the_draft_returns_the_same_middles(llama_cpp_home, tmp_path):
    prompts = tmp_path / "heldout.jsonl"
    fim_samples.main(["--model", "stdlib-fim-10m", "--split", "heldout", "--count", str(COUNT), "--output",
                      str(prompts)])
    args = infill_llamacpp.parse_args(["--draft", "stdlib-fim-10m-eagle3", "--prompts", str(prompts), "--outtype",
                                       "f32", "--server", str(llama_cpp_home / "build" / "bin" / "llama-server"),
                                       "--llama-cpp", str(llama_cpp_home / "src"), "--output", str(tmp_path / "f32"),
                                       "--gguf-dir", str(tmp_path / "gguf"), "--threads", "1"])
    figures = infill_llamacpp.run(args)
    print((tmp_path / "f32" / "report.md").read_text())
    assert figures["prompts"] == COUNT
    assert figures["identical_with_draft"] == COUNT
    assert figures["plain_equals_ours"] == COUNT
    assert figures["acceptance"] >= MIN_ACCEPTANCE
