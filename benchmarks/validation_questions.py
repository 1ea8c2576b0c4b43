"""The validation chats of a training run as bench questions: the first user turn of each chat on the test side
of feature directories (the rule `train --features ... --test-split F --seed S` splits by), so the chain tau a
draft reaches in `eaglespec bench` is measured on the prompts its test accuracy was measured on.

    python benchmarks/validation_questions.py runs/smollm2/features-sampled3 runs/smollm2/features-regen4800 \
        --output runs/ablation35/validation.jsonl

Each feature directory's manifest names its prepared dataset, whose `prepare_meta.json` names the raw chat file;
a chat is found there by its id, and its prepared tokens must equal the features' (else the files changed).
Questions are written in MT-bench's format, sources interleaved, so `bench --limit N` takes a mix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from itertools import zip_longest
from pathlib import Path


def raw_records(prepared: Path) -> dict[str, dict]:
    """id -> raw record of the files a prepared dataset was made from."""
    meta = json.loads((prepared / "prepare_meta.json").read_text())
    records = {}
    for entry in meta["inputs"]:
        with open(entry["path"], encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                record = json.loads(line)
                if record["id"] in records:
                    sys.exit(f"{entry['path']}:{line_no}: id {record['id']!r} repeats; ids must name one chat")
                records[record["id"]] = record
    return records


def first_user_turn(record: dict) -> str:
    for turn in record.get("conversations", record.get("messages", [])):
        if turn.get("from", turn.get("role")) in ("human", "user"):
            return turn.get("value", turn.get("content"))
    raise ValueError(f"chat {record['id']!r} has no user turn")


def validation_chats(directories: list[Path], test_split: float, seed: int) -> list[dict]:
    """The test side of the directories read as one dataset, as MT-bench questions."""
    from eaglespec.data import load_prepared
    from eaglespec.data.features import FeatureDatasets
    from eaglespec.training.data import split_indices

    features = FeatureDatasets(directories)
    _, test = split_indices(features, test_split, seed)
    located, start = [], 0
    for directory, manifest in features.manifests:
        prepared, _ = load_prepared(Path(manifest.data_dir))
        located.append((start, start + len(prepared), prepared, raw_records(Path(manifest.data_dir)), directory))
        start += len(prepared)
    questions = []
    for index in test:
        lo, _, prepared, records, directory = next(entry for entry in located if entry[0] <= index < entry[1])
        row = prepared[index - lo]
        if row["input_ids"] != features.sample_tokens(index)["input_ids"].tolist():
            sys.exit(f"{directory}: sample {index - lo} differs from its prepared dataset; dump the features again")
        record = records[row["id"]]
        questions.append({"question_id": row["id"], "category": record.get("source", directory.name),
                          "turns": [first_user_turn(record)]})
    return questions


def interleaved(questions: list[dict]) -> list[dict]:
    by_source = defaultdict(list)
    for q in questions:
        by_source[q["category"]].append(q)
    return [q for group in zip_longest(*by_source.values()) for q in group if q is not None]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", type=Path, nargs="+", help="feature directories, in the order training reads them")
    p.add_argument("--test-split", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    questions = interleaved(validation_chats(args.features, args.test_split, args.seed))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    counts = defaultdict(int)
    for q in questions:
        counts[q["category"]] += 1
    print(f"{len(questions)} validation chats -> {args.output}: {dict(counts)}")


if __name__ == "__main__":
    main()
