#!/usr/bin/env bash
# Self-distillation speed: records/s and new tokens/s of `eaglespec regenerate` on the same 64 chats of
# ../shared/data/train/ (16 each of gsm8k, dolly open QA, GPTeacher codegen, ShareGPT), SmolLM2-135M-Instruct in
# bf16, greedy, --max-new-tokens 256. Compares a BASE checkout (default: the commit before eaglespec.distill, in
# /tmp/base; its lockstep `model.generate` path and its --continuous-batching path) with this tree.
# Run it only on an otherwise quiet machine (it refuses to start while the 1-minute load is >= 0.5).
#   git worktree add /tmp/base abfcd4a && eaglespec fetch smollm2-135m && bash benchmarks/regenerate_speed.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
BASE="${BASE:-/tmp/base}"
OUT="${OUT:-/tmp/regenerate_speed}"
BATCH="${BATCH:-32}"
MAX_NEW="${MAX_NEW:-256}"  # new tokens per answer
LIMIT="${LIMIT:-64}"  # chats (a smaller number checks the script quickly)
PYTHON="${PYTHON:-$here/.venv/bin/python}"
mkdir -p "$OUT"
load=$(cut -d' ' -f1 /proc/loadavg)
if [ "${FORCE:-0}" != 1 ] && awk "BEGIN{exit !($load >= 0.5)}"; then
    echo "load $load >= 0.5: not a quiet machine; rerun later (or FORCE=1)"; exit 1
fi
"$PYTHON" "$here/benchmarks/regenerate_speed_data.py" "$here/../shared/data/train" "$OUT/chats64.jsonl"
head -n "$LIMIT" "$OUT/chats64.jsonl" > "$OUT/chats.jsonl"
common=(regenerate --model smollm2-135m --input "$OUT/chats.jsonl" --data-format chat --max-new-tokens "$MAX_NEW"
        --dtype bf16 --batch-size "$BATCH")
run() {  # name, PYTHONPATH, extra flags...
    local name=$1 path=$2; shift 2
    rm -f "$OUT/$name.jsonl"
    echo "== $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
    local start end load
    load=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    PYTHONPATH="$path" "$PYTHON" -m eaglespec "${common[@]}" --output "$OUT/$name.jsonl" "$@" > "$OUT/$name.log" 2>&1
    end=$(date +%s.%N)
    "$PYTHON" "$here/benchmarks/regenerate_speed_data.py" --count "$OUT/$name.jsonl" "$start" "$end" "$load" \
        "$(git -C "$path" rev-parse --short HEAD 2>/dev/null || echo "$path")" "$BATCH $MAX_NEW" | tee -a "$OUT/results.jsonl"
}
run before-lockstep "$BASE/src"
run before-continuous "$BASE/src" --continuous-batching
run after "$here/src"
"$PYTHON" "$here/benchmarks/regenerate_speed_data.py" --compare "$OUT/before-continuous.jsonl" "$OUT/after.jsonl" \
    | tee -a "$OUT/results.jsonl"
"$PYTHON" "$here/benchmarks/regenerate_speed_data.py" --compare "$OUT/before-lockstep.jsonl" "$OUT/after.jsonl" \
    | tee -a "$OUT/results.jsonl"
