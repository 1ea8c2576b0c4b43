#!/usr/bin/env bash
# Issue 36, check 3: a DFlash and an EAGLE-3 draft of SmolLM2-135M-Instruct trained for the same time on the same
# data, then compared in ONE interleaved `eaglespec bench` run: our decoder and llama.cpp (BF16 target GGUF), 40
# MT-bench first turns, bf16, greedy, 128 new tokens, each draft's chain length and lookup tuned by --tree auto.
#
#   bash benchmarks/dflash_vs_eagle3.sh [RUN_DIR] [MINUTES]     # default runs/cmp36, 40 minutes
#
# Needs the EAGLE-3 features of recipes/smollm2/pipeline.sh's `sampled3` part (runs/smollm2/features-sampled3 by
# default: FEATURES=DIR overrides) and the pinned llama.cpp build with the target as BF16 GGUF
# (tests/interop/build_envs.sh llama.cpp; TARGET_GGUF=FILE overrides). Both drafts train AT ONCE, one thread each,
# so they share the machine alike; nothing else should run meanwhile.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
run=${1:-runs/cmp36}
minutes=${2:-40}
shared=${SHARED:-$here/../shared}
features=${FEATURES:-runs/smollm2/features-sampled3}
gguf=${TARGET_GGUF:-$HOME/.cache/eaglespec-interop/llama.cpp/models/smollm2-135m-bf16.gguf}
mkdir -p "$run"

# 1. training: the same data, lr and batch; each method's own loss (EAGLE-3: soft CE over an 8k draft vocabulary,
#    4 TTT steps; DFlash: blocks of 8, one layer, z-lab's label cross-entropy). --max-steps sizes each lr schedule to
#    end near the time budget at the step rate measured here in a 2.5-minute probe of both at once.
common=(--basepath smollm2-135m --bs 8 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --no-progress --features "$features" --num_epochs 20 --eval-every 100 --time-budget-minutes "$minutes"
        --full-save-every 100)
latest() { ls -d "$1"/state_* 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(latest "$run/eagle3")" ] || [ -z "$(latest "$run/dflash")" ]; then
    OMP_NUM_THREADS=1 eaglespec train eagle3 "${common[@]}" --max-steps $((minutes * 65 / 4)) --savedir "$run/eagle3" \
        --ttt-length 4 --draft-vocab-size 8192 --sim-states 0 > "$run/eagle3.log" 2>&1 &
    OMP_NUM_THREADS=1 eaglespec train dflash "${common[@]}" --max-steps $((minutes * 95 / 4)) --grad-accum 1 \
        --savedir "$run/dflash" --block-size 8 --num-layers 1 --objective label > "$run/dflash.log" 2>&1 &
    wait
fi

# 2. one interleaved run: our vanilla, EAGLE-3 tuned / as a chain of 3 (llama.cpp's default n-max), DFlash tuned;
#    llama.cpp alone, with the EAGLE-3 draft (n-max 3) and with the DFlash draft (its whole block of 7)
eaglespec bench --base smollm2-135m --draft "$(latest "$run/eagle3")" "$(latest "$run/dflash")" \
    --questions "$shared/data/eval/eagle_mt_bench_question.jsonl" --every 2 --first-turn-only \
    --methods vanilla,eagle,eagle-chain,dflash,llama.cpp,llama.cpp-eagle3,llama.cpp-dflash:n7 --chain-depth 3 \
    --max-new-tokens 128 --repeats 2 --dtype bfloat16 --tree auto \
    --calibration "$shared/data/eval/eagle_alpaca_question.jsonl" --gguf-target "$gguf" --output "$run/bench"
