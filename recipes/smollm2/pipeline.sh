#!/usr/bin/env bash
# The SmolLM2-135M-Instruct recipe, step by step: fetch -> self-distil -> prepare -> dump features ->
# train EAGLE-3 and EAGLE-1 (same data, same time) -> tune -> bench. Every step is resumable: rerun the
# script and finished steps are skipped (regenerate skips the ids it wrote, dump-features the shards it
# finished, train --resume continues the newest resumable checkpoint).
#
#   bash recipes/smollm2/pipeline.sh [RUN_DIR]      # default runs/smollm2
#
# REGEN_LIMIT caps the self-distilled set at the first N prompts (default: all 2750, as committed in
# recipes/smollm2/data/regen.jsonl.gz; REGEN_LIMIT=1216 is the first, smaller draft of docs/smollm2_history.md).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
run=${1:-runs/smollm2}
shared=${SHARED:-$here/../shared}
mkdir -p "$run"

eaglespec fetch smollm2-135m

# 1. prompts from the training sets only (never a benchmark), and the committed first part of the answers
[ -f "$run/prompts.jsonl" ] || python "$here/recipes/smollm2/chat_mix.py" --shared "$shared/data/train" \
    --output "$run/prompts.jsonl"
[ -f "$run/regen.jsonl" ] || gunzip -c "$here/recipes/smollm2/data/regen.jsonl.gz" > "$run/regen.jsonl"
prompts="$run/prompts.jsonl"
if [ -n "${REGEN_LIMIT:-}" ]; then head -n "$REGEN_LIMIT" "$run/prompts.jsonl" > "$run/prompts.limit.jsonl"; prompts="$run/prompts.limit.jsonl"; fi
eaglespec regenerate --model smollm2-135m --input "$prompts" --output "$run/regen.jsonl" --data-format chat \
    --batch-size 32 --dtype bf16 --max-new-tokens 200

# 1b. 1000 chats the target writes itself: a user turn sampled from its own chat template (temperature 1,
#     top-p 0.95), then its greedy answer; they bring the writing / advice / rewriting requests the sets above lack
[ -f "$run/sampled.jsonl" ] || gunzip -c "$here/recipes/smollm2/data/sampled.jsonl.gz" > "$run/sampled.jsonl"
eaglespec regenerate --model smollm2-135m --sample-chats 1000 --prompt-temperature 1.0 --top-p 0.95 \
    --output "$run/sampled.jsonl" --batch-size 32 --dtype bf16 --max-new-tokens 200
#     and 2400 more of them (two more seeds, so other user turns)
for seed in 1 2; do
    part=sampled$((seed + 1))
    [ -f "$run/$part.jsonl" ] || gunzip -c "$here/recipes/smollm2/data/$part.jsonl.gz" > "$run/$part.jsonl"
    eaglespec regenerate --model smollm2-135m --sample-chats 1200 --prompt-temperature 1.0 --top-p 0.95 \
        --seed "$seed" --output "$run/$part.jsonl" --batch-size 32 --dtype bf16 --max-new-tokens 200
done

# 2. tokenise with the chat template's exact loss masks, and run the target once (bf16) for the features
for part in regen sampled sampled2 sampled3; do
    [ -d "$run/prepared-$part" ] || eaglespec prepare --data-format chat --input "$run/$part.jsonl" \
        --tokenizer smollm2-135m --output "$run/prepared-$part"
    eaglespec dump-features --model smollm2-135m --data "$run/prepared-$part" --method eagle3 \
        --output "$run/features-$part" --target-dtype bf16 --batch-size 8 --shard-size 200
done

# 3. EAGLE-3 (8k draft vocabulary, all 6150 chats, 5 epochs of about 16 min here, one lr schedule)
common=(--basepath smollm2-135m --bs 8 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --no-progress)
resume=(); [ -d "$run/eagle3" ] && resume=(--resume)
eaglespec train eagle3 "${common[@]}" "${resume[@]}" --sim-states 8 \
    --features "$run/features-regen" "$run/features-sampled" "$run/features-sampled2" "$run/features-sampled3" \
    --savedir "$run/eagle3" --num_epochs 5 --ttt-length 4 --draft-vocab-size 8192 --eval-every 5 \
    --full-save-every 1 2>&1 | tee "$run/train-eagle3.log"

# 3b. EAGLE-3 against EAGLE-1: the same features (2750 re-answered + 1000 self-written chats) and the same
#     8 minutes of training each (--max-steps sizes each one's lr schedule to end near the budget at its
#     throughput here), then each decodes the same 10 MT-bench first turns with the same tree, no lookup
cmp=(--num_epochs 1 --time-budget-minutes 8 --sim-states 0)
mkdir -p "$run/cmp"   # a run is done once it saved its state_N (at the budget's end); else it restarts
compgen -G "$run/cmp/eagle3/state_*" > /dev/null || eaglespec train eagle3 "${common[@]}" "${cmp[@]}" --max-steps 180 \
    --features "$run/features-regen" "$run/features-sampled" --savedir "$run/cmp/eagle3" --ttt-length 4 \
    --draft-vocab-size 8192 2>&1 | tee "$run/cmp/train-eagle3.log"
compgen -G "$run/cmp/eagle1/state_*" > /dev/null || eaglespec train eagle1 "${common[@]}" "${cmp[@]}" \
    --max-steps 230 --warmup-steps 6 --tmpdir "$run/features-regen" "$run/features-sampled" \
    --cpdir "$run/cmp/eagle1" 2>&1 | tee "$run/cmp/train-eagle1.log"
latest() { ls -d "$1"/state_* | sort -V | tail -n 1; }
for method in eagle3 eagle1; do
    eaglespec bench --base smollm2-135m --draft "$(latest "$run/cmp/$method")" \
        --questions "$shared/data/eval/eagle_mt_bench_question.jsonl" --every 8 --first-turn-only \
        --methods vanilla,eagle --max-new-tokens 128 --repeats 2 --dtype bfloat16 --tree dynamic --depth 3 \
        --draft-top-k 4 --total-tokens 16 --lookup 0 --output "$run/cmp/bench-$method"
done

# 4. tune the tree for this machine (writes `decoding` into the draft's config.json), then the README tables
eaglespec tune --base smollm2-135m --draft "$(latest "$run/eagle3")" --dtype bfloat16 \
    --calibration "$shared/data/eval/eagle_alpaca_question.jsonl" --max-new-tokens 128
bash "$here/benchmarks/readme_tables.sh" smollm2-135m "$(latest "$run/eagle3")" "$run/bench"
