"""The ablation table of benchmarks/ablation_35.sh: per run, the final test evaluation of its metrics.jsonl and
the chain-3 tau its `eaglespec bench` measured.

    python benchmarks/ablation_table.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def final_test(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [m for m in lines if m["split"] == "test"]
    if not tests:
        sys.exit(f"{run / 'metrics.jsonl'}: no test evaluation")
    return tests[-1]


def measured_chain3(bench: Path) -> str:
    results = bench / "results.json"
    if not results.is_file():
        return "not run"
    chain = json.loads(results.read_text())["overall"]["eagle-chain"]
    return f"{chain['tau']:.2f}"


def row(run: Path) -> str:
    m = final_test(run)
    acc = " / ".join(f"{a:.1f}" for a in m["acc"])
    accept = " / ".join(f"{a:.1f}" for a in m["accept"])
    sims = [m.get(k) for k in ("sim_accept_length", "sim_accept_length_chain", "sim_accept_length_chain3")]
    sim = " / ".join("-" if s is None else f"{s:.2f}" for s in sims)
    measured = measured_chain3(run.parent / f"bench-{run.name}")
    return f"| {run.name} | {m['step']} | {acc} | {accept} | {sim} | {measured} |"


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    runs = sorted(p.parent for p in root.glob("*/.done"))
    print("| run | steps | validation top-1 by position (%) | validation acceptance rate, sum of min(p, q), by "
          "position (%) | simulated tau: dynamic tree / chain of 7 / chain of 3 | measured chain-3 tau |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main(sys.argv[1:])
