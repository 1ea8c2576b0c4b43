#!/usr/bin/env bash
# Issue 35: the SmolLM2-135M-Instruct EAGLE-3 draft at 5x the data of pipeline.sh, step by step, every step
# resumable (rerun the script; finished steps are skipped, regenerate skips the ids it wrote, dump-features the
# shards it finished, train --resume continues the newest resumable checkpoint, kept every 20 minutes).
#
#   bash recipes/smollm2/scale.sh [RUN_DIR]        # default runs/smollm2
#
# Data (30,100 chats, prompts only from training sets or written by the model itself, never a benchmark):
#   regen-all   15,900 prompts of `chat_mix.py --all`, re-answered (committed: regen.jsonl.gz + regen-all-part2)
#   sampled, sampled2, sampled3   3400 chats the model wrote itself (committed)
#   sampled-s3, sampled-s4        2 x 5400 more of them (seeds 3 and 4, answers up to 256 tokens)
# Features: EAGLE-3, the target in DTYPE, aux layers int8 (`--aux-int8`, about 3.0 KB a token instead of 4.6).
# TRAIN_MINUTES (optional) stops training cleanly after that many minutes (rerun to continue). LR, EPOCHS, TTT,
# OBJECTIVE, TEST_SPLIT and SIM_STATES override the training settings of step 3; NAME and INIT_FROM are explained
# there.
# DTYPE (bf16 or fp32) is the target's dtype and the training precision; by default bf16 where the CPU has bf16
# hardware (AVX512-BF16, AMX), else fp32 (bf16 is emulated there, about 6x slower). Records say nothing of it:
# the data README says which parts were made how.
# SERVER=URL (optional) sends the generation to an OpenAI-compatible server instead of the local target, CONCURRENCY
# (default 16) requests at a time; on an AVX2 CPU llama-server with a Q8_0 GGUF made 2.2x the records/s of our
# fp32 batch (benchmarks/results/regenerate-35/engines.md). Records made that way name the server (`generated_by`).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
run=${1:-runs/smollm2}
shared=${SHARED:-$here/../shared}
data="$here/recipes/smollm2/data"
mkdir -p "$run"
dtype=${DTYPE:-$(python -c 'from eaglespec.models import cpu_has_native_bf16 as f; print("bf16" if f() else "fp32")')}
engine=(--batch-size 32 --dtype "$dtype")
[ -z "${SERVER:-}" ] || engine=(--server "$SERVER" --concurrency "${CONCURRENCY:-16}")

eaglespec fetch smollm2-135m

# 1. the chats
[ -f "$run/prompts-all.jsonl" ] || python "$here/recipes/smollm2/chat_mix.py" --shared "$shared/data/train" --all \
    --output "$run/prompts-all.jsonl"
[ -f "$run/regen-all.jsonl" ] || gunzip -c "$data/regen.jsonl.gz" "$data/regen-all-part2.jsonl.gz" > "$run/regen-all.jsonl"
eaglespec regenerate --model smollm2-135m --input "$run/prompts-all.jsonl" --output "$run/regen-all.jsonl" \
    --data-format chat "${engine[@]}" --max-new-tokens 256
for part in sampled sampled2 sampled3; do
    [ -f "$run/$part.jsonl" ] || gunzip -c "$data/$part.jsonl.gz" > "$run/$part.jsonl"
done
for seed in 3 4; do
    part=sampled-s$seed
    [ -f "$run/$part.jsonl" ] || [ ! -f "$data/$part.jsonl.gz" ] || gunzip -c "$data/$part.jsonl.gz" > "$run/$part.jsonl"
    eaglespec regenerate --model smollm2-135m --sample-chats 5400 --prompt-temperature 1.0 --top-p 0.95 \
        --seed "$seed" --output "$run/$part.jsonl" "${engine[@]}" --max-new-tokens 256
done

# 2. tokenised with the chat template's loss masks, then the target once (DTYPE) for int8-aux features
parts=(regen-all sampled sampled2 sampled3 sampled-s3 sampled-s4)
features=()
for part in "${parts[@]}"; do
    [ -d "$run/prepared-$part" ] || eaglespec prepare --data-format chat --input "$run/$part.jsonl" \
        --tokenizer smollm2-135m --output "$run/prepared-$part"
    eaglespec dump-features --model smollm2-135m --data "$run/prepared-$part" --method eagle3 --aux-int8 \
        --output "$run/features35-$part" --target-dtype "$dtype" --batch-size 8 --shard-size 500
    features+=("$run/features35-$part")
done

# 3. EAGLE-3 on all of it, one lr schedule. NAME (default eagle3-35) names the run directory and its log;
#    INIT_FROM=DRAFT starts from that draft's weights (a fresh optimizer and schedule) instead of from scratch.
name=${NAME:-eagle3-35}
resume=(); [ -d "$run/$name" ] && resume=(--resume)
budget=(); [ -n "${TRAIN_MINUTES:-}" ] && budget=(--time-budget-minutes "$TRAIN_MINUTES")
init=(); [ -n "${INIT_FROM:-}" ] && init=(--init-from "$INIT_FROM")
split=(); [ -n "${TEST_SPLIT:-}" ] && split=(--test-split "$TEST_SPLIT")
eaglespec train eagle3 --basepath smollm2-135m --bs 8 --grad-accum 2 --lr "${LR:-2e-3}" --precision "$dtype" \
    --target-dtype "$dtype" --group-by-length --no-progress --sim-states "${SIM_STATES:-8}" \
    --features "${features[@]}" --savedir "$run/$name" --num_epochs "${EPOCHS:-2}" --ttt-length "${TTT:-4}" \
    --objective "${OBJECTIVE:-ce}" --draft-vocab-size 8192 --full-save-every 1 --save-every-minutes 20 \
    "${init[@]}" "${split[@]}" "${resume[@]}" "${budget[@]}" 2>&1 | tee -a "$run/train-$name.log"
