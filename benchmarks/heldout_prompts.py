"""Write prompts from the held-out test split of a prepared dataset (the split training uses), as JSONL
{"prompt": text} for `eaglespec generate --input`: the first --prompt-tokens tokens of each test sample.

    python benchmarks/heldout_prompts.py --data PREPARED_DIR --tokenizer stories260K --num 20 --output p.jsonl
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from eaglespec.data import load_prepared
from eaglespec.models import resolve_model_path
from eaglespec.training.data import split_indices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--prompt-tokens", type=int, default=16, help="tokens of each sample kept as the prompt (BOS incl.)")
    p.add_argument("--test-split", type=float, default=0.05, help="as given to eaglespec train")
    p.add_argument("--seed", type=int, default=0, help="as given to eaglespec train")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    dataset, _ = load_prepared(args.data)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer))
    _, test = split_indices(dataset, args.test_split, args.seed)
    if len(test) < args.num:
        raise SystemExit(f"the test split has only {len(test)} samples, fewer than --num {args.num}")
    with open(args.output, "w", encoding="utf-8") as f:
        for i in test[: args.num]:
            ids = list(dataset[i]["input_ids"])[: args.prompt_tokens]
            f.write(json.dumps({"prompt": tokenizer.decode(ids, skip_special_tokens=True), "sample": i}) + "\n")
    print(f"wrote {args.num} held-out prompts (test split of {len(test)} samples) to {args.output}")


if __name__ == "__main__":
    main()
