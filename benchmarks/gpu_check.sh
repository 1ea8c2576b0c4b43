#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the CUDA tests, then bf16 decoding figures on the GPU.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [STORIES_DRAFT] [SMOLLM2_CONFIG]
#
# 1. `pytest -m gpu`: greedy fp32 exactness on CUDA (batch size 1 and batched), seeded sampling, bf16 decoding,
#    EAGLE-1/EAGLE-3 training on CUDA, `eaglespec bench --device cuda` (fp32 all exact, bf16 no MISMATCH).
# 2. `eaglespec bench` on stories260K with a trained EAGLE-3 draft (e.g. the demo's), bf16, --tree auto.
# 3. benchmarks/step_cost.py: a step's cost (forward over T tokens; vanilla vs speculative ms per forward) for
#    SmolLM2-135M's shape with the committed draft, and for Llama-3-8B's shape with a random EAGLE-3 head.
# Each part has its own time limit (seconds, PART_TIMEOUT, default 900) so that one slow part cannot take the
# others' results with it. On a lent H200 VM the tests took 208 s; the stories260K bench (its --tree auto tune
# alone) and step_cost.py did not finish in 140 / 60-80 s: a forward of the 5-layer stories260K took 5 ms there.
set -uo pipefail
out=${1:?output directory}
draft=${2:-}
smollm2_config=${3:-}
here="$(cd "$(dirname "$0")/.." && pwd)"
limit=${PART_TIMEOUT:-900}
py=${PYTHON:-python3}  # the interpreter with torch (CUDA) and eaglespec's requirements
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ -n "$draft" ]; then draft="$(realpath "$draft")"; fi
if [ -n "$smollm2_config" ]; then smollm2_config="$(realpath "$smollm2_config")"; fi
cd "$here"  # the test paths below are the checkout's
export PYTHONUNBUFFERED=1 PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

timeout "$limit" "$py" -m pytest -m gpu -p no:cacheprovider -q -rs --durations 10 tests/decoding/test_on_cuda.py \
    tests/training/test_on_cuda.py tests/evaluation/test_on_cuda.py 2>&1 | tee "$out/gpu_tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]}" | tee -a "$out/gpu_tests.log"

if [ -n "$draft" ]; then
    timeout "$limit" "$py" -m eaglespec bench --base stories260K --draft "$draft" \
        --questions "$here/benchmarks/story_prompts.txt" --methods vanilla,hf,eagle,eagle-chain,eagle-default,pld \
        --max-new-tokens 128 --repeats 2 --device cuda --dtype bfloat16 --tree auto --output "$out/stories260K" \
        2>&1 | grep -v "it/s" | tail -40
    echo "stories260K bench: exit ${PIPESTATUS[0]}"
fi
if [ -n "$smollm2_config" ]; then
    timeout "$limit" "$py" "$here/benchmarks/step_cost.py" --config "$smollm2_config" \
        --draft "$here/src/eaglespec/assets/drafts/smollm2-135m-eagle3" --tau 2.65 --output "$out/step_cost_smollm2.json"
    echo "step cost smollm2: exit $?"
fi
timeout "$limit" "$py" "$here/benchmarks/step_cost.py" --preset llama-3-8b --tree dynamic --depth 5 --draft-top-k 8 \
    --total-tokens 48 --output "$out/step_cost_llama-3-8b.json"
echo "step cost llama-3-8b: exit $?"
