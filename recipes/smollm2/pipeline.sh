#!/usr/bin/env bash
# The SmolLM2-135M-Instruct recipe, step by step: fetch -> self-distil -> prepare -> dump features ->
# train EAGLE-3 and EAGLE-1 (same data, same time) -> tune -> bench. Every step is resumable: rerun the
# script and finished steps are skipped (regenerate skips the ids it wrote, dump-features the shards it
# finished, train --resume continues the newest resumable checkpoint).
#
#   bash recipes/smollm2/pipeline.sh [RUN_DIR]      # default runs/smollm2
#
# REGEN_LIMIT caps the self-distilled set at the first N prompts (default: all 2750, as committed in
# recipes/smollm2/data/regen.jsonl.gz; REGEN_LIMIT=1216 is the README's first, smaller draft).
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
#     and 1200 more of them (another seed, so other user turns)
[ -f "$run/sampled2.jsonl" ] || gunzip -c "$here/recipes/smollm2/data/sampled2.jsonl.gz" > "$run/sampled2.jsonl"
eaglespec regenerate --model smollm2-135m --sample-chats 1200 --prompt-temperature 1.0 --top-p 0.95 --seed 1 \
    --output "$run/sampled2.jsonl" --batch-size 32 --dtype bf16 --max-new-tokens 200

# 2. tokenise with the chat template's exact loss masks, and run the target once (bf16) for the features
for part in regen sampled sampled2; do
    [ -d "$run/prepared-$part" ] || eaglespec prepare --data-format chat --input "$run/$part.jsonl" \
        --tokenizer smollm2-135m --output "$run/prepared-$part"
    eaglespec dump-features --model smollm2-135m --data "$run/prepared-$part" --method eagle3 \
        --output "$run/features-$part" --target-dtype bf16 --batch-size 8 --shard-size 200
done

# 3. EAGLE-3 (8k draft vocabulary, 3562 chats, about 15 min per epoch here) and, for comparison, EAGLE-1 on the same
#    features (2 epochs); one after the other, each with the whole machine
common=(--basepath smollm2-135m --bs 8 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --sim-states 8 --eval-every 2 --no-progress)
#    The draft benched in the README was trained further from the 4-epoch run's epoch-3 draft (the run was
#    stopped in epoch 4; its state_3 was the bf16 draft, here it is the fp32 resumable state): 3 more epochs from
#    its weights with a fresh schedule at lr 1e-3 (--init-from). Once state_3 exists the first run is not needed.
resume=(); [ -d "$run/eagle3" ] && resume=(--resume)
[ -f "$run/eagle3/state_3/checkpoint.json" ] || eaglespec train eagle3 "${common[@]}" "${resume[@]}" \
    --features "$run/features-regen" "$run/features-sampled" --savedir "$run/eagle3" \
    --num_epochs 4 --ttt-length 4 --draft-vocab-size 8192 --full-save-every 1 2>&1 | tee "$run/train-eagle3.log"
resume=(); [ -d "$run/eagle3-more" ] && resume=(--resume)
eaglespec train eagle3 "${common[@]}" "${resume[@]}" --features "$run/features-regen" "$run/features-sampled" \
    --savedir "$run/eagle3-more" --init-from "$run/eagle3/state_3" --lr 1e-3 --num_epochs 3 --eval-every 3 \
    --ttt-length 4 --full-save-every 1 2>&1 | tee "$run/train-eagle3-more.log"
#    then 2 more epochs with the 1200 more self-written chats: the draft benched last in the README
resume=(); [ -d "$run/eagle3-more2" ] && resume=(--resume)
eaglespec train eagle3 "${common[@]}" "${resume[@]}" \
    --features "$run/features-regen" "$run/features-sampled" "$run/features-sampled2" \
    --savedir "$run/eagle3-more2" --init-from "$run/eagle3-more/state_3" --lr 1e-3 --num_epochs 2 \
    --ttt-length 4 --full-save-every 1 2>&1 | tee "$run/train-eagle3-more2.log"
resume=(); [ -d "$run/eagle1" ] && resume=(--resume)
eaglespec train eagle1 "${common[@]}" "${resume[@]}" --tmpdir "$run/features-regen" "$run/features-sampled" --cpdir "$run/eagle1" \
    --num_epochs 2 --warmup-steps 6 --save-freq 1 2>&1 | tee "$run/train-eagle1.log"

# 4. tune the tree for this machine (writes `decoding` into the draft's config.json), then the README tables
latest() { ls -d "$1"/state_* | sort -V | tail -n 1; }
eaglespec tune --base smollm2-135m --draft "$(latest "$run/eagle3-more2")" --dtype bfloat16
eaglespec tune --base smollm2-135m --draft "$(latest "$run/eagle1")" --dtype bfloat16
bash "$here/benchmarks/readme_tables.sh" smollm2-135m "$(latest "$run/eagle3-more2")" "$run/bench"
