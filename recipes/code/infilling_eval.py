"""Exact match of the code model's greedy middles on HumanEval infilling (issue 37, acceptance 1).

    python recipes/code/infilling_eval.py --model stdlib-fim-10m \
        --data ../shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz --limit 80

Each record's prompt and suffix go in as a PSM FIM prompt (the layout `bench` and `prepare` use); the greedy
middle runs to the end-of-text token or --max-new-tokens; it matches when it equals the canonical middle up to
surrounding whitespace (the first line only, for single-line infilling, where the model may run on). fp32.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def matches(generated: str, canonical: str, single_line: bool) -> bool:
    if single_line:
        generated = generated.split("\n", 1)[0]
    return generated.strip() == canonical.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--limit", type=int, default=None, help="first N records")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    from eaglespec.data.fim import detect_fim_tokens, fim_prompt_ids
    from eaglespec.decoding import SpeculativeGenerator

    gen = SpeculativeGenerator.from_pretrained(args.model, None, dtype="float32")
    fim = detect_fim_tokens(gen.tokenizer)
    records = read_jsonl(args.data)[: args.limit]
    single = "SingleLine" in args.data.name
    hits = 0
    for r in records:
        ids = fim_prompt_ids(gen.tokenizer, r["prompt"], r["suffix"], fim)
        out = gen.vanilla_generate(ids, args.max_new_tokens, eos_token_id=fim.terminator_id)
        hits += matches(out.text, r["canonical_solution"], single)
    print(f"{args.data.name}: {hits} of {len(records)} greedy middles exact ({100 * hits / len(records):.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
