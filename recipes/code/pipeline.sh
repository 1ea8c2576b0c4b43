#!/usr/bin/env bash
# The code model's drafts, step by step, as the tutorial's commands (`--data-format fim`): FIM samples from the
# held-in standard-library files -> middles re-answered by the model itself (committed) -> prepare -> dump
# features -> EAGLE-3 (trimmed vocabulary) and EAGLE-1 at equal training time -> bench on HumanEval infilling
# and completion, fp32 and bf16. Every step is resumable: rerun the script and finished steps are skipped.
#
#   bash recipes/code/pipeline.sh [RUN_DIR]      # default runs/code
#
# The model itself ships as `stdlib-fim-10m` (train.py made it); its EAGLE-3 draft from this script ships as
# `stdlib-fim-10m-eagle3`.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
run=${1:-runs/code}
shared=${SHARED:-$here/../shared}
mkdir -p "$run"

# 1. 4000 FIM records from the held-in files, their middles re-answered by the model (committed: 3998 of them)
[ -f "$run/fim-samples.jsonl" ] || python "$here/recipes/code/fim_samples.py" --model stdlib-fim-10m --count 4000 \
    --output "$run/fim-samples.jsonl"
[ -f "$run/fim-regen.jsonl" ] || gunzip -c "$here/recipes/code/data/fim-regen.jsonl.gz" > "$run/fim-regen.jsonl"
eaglespec regenerate --model stdlib-fim-10m --input "$run/fim-samples.jsonl" --data-format fim \
    --output "$run/fim-regen.jsonl" --dtype bfloat16 --batch-size 32 --max-new-tokens 128

# 2. tokenise with the FIM loss mask (only the middle is trained), run the target once for the features
[ -d "$run/prepared" ] || eaglespec prepare --data-format fim --input "$run/fim-regen.jsonl" \
    --tokenizer stdlib-fim-10m --output "$run/prepared"
for method in eagle3 eagle1; do
    eaglespec dump-features --model stdlib-fim-10m --data "$run/prepared" --method "$method" \
        --output "$run/features-$method" --target-dtype bf16 --batch-size 16 --shard-size 500
done

# 3. EAGLE-3 (4096-token draft vocabulary: every middle token) and EAGLE-1, side by side with one thread each,
#    35 minutes each; --max-steps sizes each lr schedule to end near the budget at its throughput here (measured:
#    0.9 s per EAGLE-3 step, 2.0 s per EAGLE-1 step, whose head scores all 12,288 tokens, not 4096)
common=(--basepath stdlib-fim-10m --bs 8 --lr 2e-3 --precision bf16 --target-dtype bf16 --group-by-length
        --no-progress --sim-states 0 --time-budget-minutes 35)
mkdir -p "$run/cmp"   # a run is done once it saved its state_N (at the budget's end)
compgen -G "$run/cmp/eagle3/state_*" > /dev/null || OMP_NUM_THREADS=1 eaglespec train eagle3 "${common[@]}" \
    --num_epochs 5 --max-steps 2300 --features "$run/features-eagle3" --savedir "$run/cmp/eagle3" --ttt-length 4 \
    --draft-vocab-size 4096 > "$run/cmp/train-eagle3.log" 2>&1 &
compgen -G "$run/cmp/eagle1/state_*" > /dev/null || OMP_NUM_THREADS=1 eaglespec train eagle1 "${common[@]}" \
    --num_epochs 3 --max-steps 1000 --tmpdir "$run/features-eagle1" --cpdir "$run/cmp/eagle1" > "$run/cmp/train-eagle1.log" 2>&1 &
wait
latest() { ls -d "$1"/state_* | sort -V | tail -n 1; }

# 4. the benchmarks: tune on held-out code (never a benchmark file), then every method, fp32 and bf16
[ -f "$run/calibration.jsonl" ] || python "$here/recipes/code/fim_samples.py" --model stdlib-fim-10m \
    --split heldout --count 24 --seed 1 --output "$run/calibration.jsonl"
bash "$here/benchmarks/code_tables.sh" "$(latest "$run/cmp/eagle3")" "$(latest "$run/cmp/eagle1")" \
    "$run/calibration.jsonl" "$run/bench"
