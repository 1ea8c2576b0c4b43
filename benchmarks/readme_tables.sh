#!/usr/bin/env bash
# Reproduce the README's performance tables with `eaglespec bench` (run it with nothing else on the machine).
#
#   bash benchmarks/readme_tables.sh stories260K DRAFT_DIR [OUT_DIR]          # the stories260K tables
#   bash benchmarks/readme_tables.sh smollm2-135m DRAFT_DIR [OUT_DIR]         # the SmolLM2 chat tables
#   bash benchmarks/readme_tables.sh /path/to/your/model DRAFT_DIR [OUT_DIR]  # any target a user names
#
# Each run writes results.json, report.md and plots per configuration under OUT_DIR. SHARED points at the
# shared data (default ../shared beside the checkout).
set -euo pipefail
base=${1:?target model (stories260K, smollm2-135m or a path)}
draft=${2:?draft directory}
out=${3:-bench-results}
here="$(cd "$(dirname "$0")/.." && pwd)"
shared=${SHARED:-$here/../shared}
mtbench="$shared/data/eval/eagle_mt_bench_question.jsonl"
alpaca="$shared/data/eval/eagle_alpaca_question.jsonl"  # --tree auto's calibration for MT-bench: requests of the
#                                                          same kind, none of the benchmark's

if [ "$base" = stories260K ]; then
    # a base model: MT-bench turns as plain text (exactness on text it was not trained for; tuned on Alpaca
    # requests), and story openings (benchmarks/story_prompts.txt, the text it knows; tuned on the built-in ones)
    for dtype in float32 bfloat16; do
        eaglespec bench --base "$base" --draft "$draft" --questions "$mtbench" --every 4 --first-turn-only \
            --methods vanilla,hf,eagle,eagle-chain,eagle-default,pld --max-new-tokens 128 --repeats 3 \
            --dtype "$dtype" --tree auto --calibration "$alpaca" --output "$out/stories260K-mtbench-$dtype"
        eaglespec bench --base "$base" --draft "$draft" --questions "$here/benchmarks/story_prompts.txt" \
            --methods vanilla,hf,eagle,eagle-chain,eagle-default,pld --max-new-tokens 128 --repeats 3 \
            --dtype "$dtype" --tree auto --output "$out/stories260K-stories-$dtype"
    done
else
    # a chat model: 40 MT-bench first turns (every second question: all 8 categories), bf16, greedy, --tree auto
    # calibrated on Alpaca requests (#10's acceptance command), with what each part of the tuned eagle brings:
    # eagle-nolookup (its tree without n-gram lookup: the draft alone)
    name=$(basename "$base")
    eaglespec bench --base "$base" --draft "$draft" --questions "$mtbench" --every 2 --first-turn-only \
        --methods vanilla,hf,eagle,eagle-nolookup,eagle-chain,pld --max-new-tokens 128 --repeats 2 \
        --dtype bfloat16 --tree auto --calibration "$alpaca" --output "$out/$name-auto"
    # the same tree at temperature 0.7 (sampled output has no token-for-token reference: no exactness column)
    tree_flags=$(python - "$out/$name-auto/results.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["tree"]
flags = {"kind": "--tree", "depth": "--depth", "top_k": "--draft-top-k", "total_tokens": "--total-tokens",
         "lookup": "--lookup"}
print(" ".join(f"{flags[k]} {v}" for k, v in t.items() if k in flags))
PY
)
    # shellcheck disable=SC2086
    eaglespec bench --base "$base" --draft "$draft" --questions "$mtbench" --every 2 --first-turn-only \
        --methods vanilla,eagle --temperature 0.7 --seed 0 --max-new-tokens 128 --repeats 2 --dtype bfloat16 \
        $tree_flags --output "$out/$name-t0.7"
    for bs in 4 8; do
        eaglespec bench --base "$base" --draft "$draft" --questions "$mtbench" --every 2 --first-turn-only \
            --max-new-tokens 128 --repeats 2 --dtype bfloat16 --batch-size "$bs" --output "$out/$name-batch$bs"
    done
fi
