#!/usr/bin/env bash
# Issue 35's ablation of the SmolLM2 EAGLE-3 draft: objective (ce, tv, lk, ce+tv), TTT length (3, 4, 6) and data
# size (1200 chats, 6000 chats), each run at equal training steps (STEPS optimizer steps of 2 micro-batches of 8
# chats, one lr schedule; bf16, 1 layer, 8192-token head) and each measured on one fixed validation split: the
# test side (--test-split 0.05, --seed 0) of the 6000 chats, never trained on by any run (`--test-features`).
# Per run: test top-1 accuracy by position, simulated tau (dynamic tree, chain, chain of 3) and the chain-3 tau
# measured by `eaglespec bench` (eagle-chain, depth 3, greedy, bf16, 128 new tokens) on the first turns of
# 24 validation chats (benchmarks/validation_questions.py). Tau is deterministic, so runs may overlap other
# jobs; their tokens/s are not reported.
#
#   bash benchmarks/ablation_35.sh RUN_DIR [STEPS [RUN...]]  # default 180 steps and every run; rerun to resume
#
# (finished runs stay). Runs can go in parallel lanes, e.g. `... RUN_DIR 180 ce-ttt4 tv-ttt4` beside
# `... RUN_DIR 180 lk-ttt4 ce+tv-ttt4`: the validation file is written first, before any run of a lane starts.
#
# SMALL (1200 chats: the self-written sampled3) and EXTRA (4800 chats: every third record of the re-answered
# training prompts) are EAGLE-3 feature directories of the SmolLM2 recipe (recipes/smollm2/data/README.md).
set -euo pipefail
run=${1:?usage: ablation_35.sh RUN_DIR [STEPS [RUN...]]}
steps=${2:-180}
small=${SMALL:-runs/smollm2/features-sampled3}
extra=${EXTRA:-runs/smollm2/features-regen4800}
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$run"

common=(--basepath smollm2-135m --bs 8 --grad-accum 2 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --no-progress --num_epochs 1000 --max-steps "$steps" --eval-every 1000 --full-save-every 1000
        --sim-states 8 --draft-vocab-size 8192 --test-features "$small" "$extra")
train() {  # NAME FLAGS...: a finished run (its .done marker) is kept; an unfinished one starts over
    local name=$1; shift
    [ -f "$run/$name/.done" ] && return
    rm -rf "${run:?}/$name"
    echo "$(date +%T) train $name: $*"
    eaglespec train eagle3 "${common[@]}" --savedir "$run/$name" "$@" > "$run/$name.log" 2>&1
    touch "$run/$name/.done"
}
flags() {  # the flags of each run
    case $1 in
        ce-ttt4) echo --features "$small" "$extra" --objective ce --ttt-length 4 ;;
        tv-ttt4) echo --features "$small" "$extra" --objective tv --ttt-length 4 ;;
        lk-ttt4) echo --features "$small" "$extra" --objective lk --ttt-length 4 ;;
        ce+tv-ttt4) echo --features "$small" "$extra" --objective ce+tv --ttt-length 4 ;;
        ce-ttt3) echo --features "$small" "$extra" --objective ce --ttt-length 3 ;;
        ce-ttt6) echo --features "$small" "$extra" --objective ce --ttt-length 6 ;;
        ce-ttt4-1200) echo --features "$small" --objective ce --ttt-length 4 ;;
        *) echo "unknown run $1" >&2; return 1 ;;
    esac
}
bench() {  # NAME: the chain-3 tau of its last draft on the validation prompts
    local name=$1
    [ -f "$run/bench-$name/results.json" ] && return
    local draft; draft=$(ls -d "$run/$name"/state_* | sort -V | tail -n 1)
    echo "$(date +%T) bench $name ($draft)"
    eaglespec bench --base smollm2-135m --draft "$draft" --questions "$run/validation.jsonl" --limit 24 \
        --methods eagle-chain --chain-depth 3 --max-new-tokens 128 --repeats 1 --dtype bfloat16 \
        --output "$run/bench-$name" > "$run/bench-$name.log" 2>&1
}

names=("${@:3}")
[ ${#names[@]} -gt 0 ] || names=(ce-ttt4 tv-ttt4 lk-ttt4 ce+tv-ttt4 ce-ttt3 ce-ttt6 ce-ttt4-1200)
[ -f "$run/validation.jsonl" ] || python "$here/benchmarks/validation_questions.py" "$small" "$extra" \
    --output "$run/validation.jsonl"
for name in "${names[@]}"; do
    # shellcheck disable=SC2046  # flags are words without spaces
    train "$name" $(flags "$name")
    bench "$name"
done
python "$here/benchmarks/ablation_table.py" "$run" | tee "$run/table.md"
