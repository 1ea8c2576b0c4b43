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

# 3. EAGLE-3 (8k draft vocabulary, all 6150 chats, 5 epochs of about 16 min here, one lr schedule) and, for
#    comparison, EAGLE-1 on part of the same features (2 epochs); one after the other, each with the whole machine
common=(--basepath smollm2-135m --bs 8 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --sim-states 8 --no-progress)
resume=(); [ -d "$run/eagle3" ] && resume=(--resume)
eaglespec train eagle3 "${common[@]}" "${resume[@]}" \
    --features "$run/features-regen" "$run/features-sampled" "$run/features-sampled2" "$run/features-sampled3" \
    --savedir "$run/eagle3" --num_epochs 5 --ttt-length 4 --draft-vocab-size 8192 --eval-every 5 \
    --full-save-every 1 2>&1 | tee "$run/train-eagle3.log"
resume=(); [ -d "$run/eagle1" ] && resume=(--resume)
eaglespec train eagle1 "${common[@]}" "${resume[@]}" --tmpdir "$run/features-regen" "$run/features-sampled" --cpdir "$run/eagle1" \
    --num_epochs 2 --warmup-steps 6 --save-freq 1 --eval-every 2 2>&1 | tee "$run/train-eagle1.log"

# 4. tune the tree for this machine (writes `decoding` into the draft's config.json), then the README tables
latest() { ls -d "$1"/state_* | sort -V | tail -n 1; }
eaglespec tune --base smollm2-135m --draft "$(latest "$run/eagle3")" --dtype bfloat16
eaglespec tune --base smollm2-135m --draft "$(latest "$run/eagle1")" --dtype bfloat16
bash "$here/benchmarks/readme_tables.sh" smollm2-135m "$(latest "$run/eagle3")" "$run/bench"
