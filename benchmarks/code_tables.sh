#!/usr/bin/env bash
# The README's code-completion tables (issue 37) with `eaglespec bench` (run it with nothing else on the machine):
# stdlib-fim-10m and its EAGLE-3 draft on HumanEval single- and multi-line infilling and HumanEval left-to-right
# completion (the first 80 of each), greedy, fp32 and bf16; then EAGLE-3 against EAGLE-1 (trained for the same
# time) with the same tree on the multi-line set. A configuration whose results.json exists is skipped (rerun the
# script to finish an interrupted run).
#
#   bash benchmarks/code_tables.sh EAGLE3_DRAFT EAGLE1_DRAFT CALIBRATION.jsonl [OUT_DIR]
#
# CALIBRATION: held-out FIM records (recipes/code/fim_samples.py --split heldout), which --tree auto tunes on:
# code of the same kind, none of the benchmark's. SHARED points at the shared data (default ../shared).
set -euo pipefail
eagle3=${1:?EAGLE-3 draft directory}
eagle1=${2:?EAGLE-1 draft directory}
calibration=${3:?held-out FIM records for --tree auto}
out=${4:-bench-results}
here="$(cd "$(dirname "$0")/.." && pwd)"
shared=${SHARED:-$here/../shared}
declare -A sets=([single]="$shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz --limit 80"
                 [multi]="$shared/data/fim/HumanEval-MultiLineInfilling.jsonl.gz --limit 80"
                 [humaneval]="$shared/data/eval/HumanEval.jsonl.gz --limit 80")
common=(--base stdlib-fim-10m --max-new-tokens 128 --repeats 2)

for dtype in float32 bfloat16; do
    for set in multi single humaneval; do
        [ -f "$out/code-$set-$dtype/results.json" ] && continue
        # shellcheck disable=SC2086
        eaglespec bench "${common[@]}" --draft "$eagle3" --questions ${sets[$set]} \
            --methods vanilla,eagle,eagle-chain,lookup,pld --dtype "$dtype" --tree auto \
            --calibration "$calibration" --output "$out/code-$set-$dtype"
    done
done

# EAGLE-3 against EAGLE-1: the tree tuned for EAGLE-3 on the multi-line set (bf16), without n-gram lookup, so each
# draft's own predictions are compared
tree_flags=$(python - "$out/code-multi-bfloat16/results.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["tree"]
flags = {"kind": "--tree", "depth": "--depth", "top_k": "--draft-top-k", "total_tokens": "--total-tokens"}
print(" ".join(f"{flags[k]} {v}" for k, v in t.items() if k in flags))
PY
)
for method in eagle3 eagle1; do
    draft=$eagle3; [ "$method" = eagle1 ] && draft=$eagle1
    [ -f "$out/code-cmp-$method/results.json" ] && continue
    # shellcheck disable=SC2086
    eaglespec bench "${common[@]}" --draft "$draft" --questions ${sets[multi]} --methods vanilla,eagle,eagle-chain \
        --dtype bfloat16 $tree_flags --lookup 0 --output "$out/code-cmp-$method"
done
