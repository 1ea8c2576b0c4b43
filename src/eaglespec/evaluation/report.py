"""Benchmark outputs: results.json (everything), report.md (tables), PNG plots, throughput JSON, a one-screen summary."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from eaglespec._io import atomic_write_text
from eaglespec.evaluation.bench import BenchResult, MethodSummary, complete_questions, summarise_all
from eaglespec.evaluation.exactness import EXACT, MISMATCH, NEAR_TIE


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: torch.device, dtype: torch.dtype) -> dict:
    import transformers

    from eaglespec._version import __version__

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "dtype": str(dtype).replace("torch.", ""), "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": transformers.__version__, "eaglespec": __version__,
            "commit": git_commit()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _summaries(result: BenchResult, methods: list[str], category: str | None = None) -> dict[str, MethodSummary]:
    done = complete_questions(result.runs, methods, result.rounds)
    runs = [r for r in result.runs if r.question_id in done and (category is None or r.category == category)]
    return summarise_all(runs, methods, result.rounds)


def exactness_counts(result: BenchResult, method: str) -> dict[str, int]:
    statuses = [e.status for e in result.exactness.get(method, {}).values()]
    return {s: statuses.count(s) for s in (EXACT, NEAR_TIE, MISMATCH)}


def results_dict(result: BenchResult, methods: list[str], config: dict, machine: dict, extra: dict) -> dict:
    categories = sorted({r.category for r in result.runs})
    return {
        "complete": result.complete, "config": config, "machine": machine, **extra, "skipped": result.skipped,
        "overall": {m: asdict(s) for m, s in _summaries(result, methods).items()},
        "categories": {c: {m: asdict(s) for m, s in _summaries(result, methods, c).items()} for c in categories},
        "exactness": {m: {"counts": exactness_counts(result, m), "per_question": {q: e.to_dict() for q, e in per.items()}}
                      for m, per in result.exactness.items()},
        "runs": [{"question_id": r.question_id, "category": r.category, "method": r.method, "round": r.round,
                  "seconds": r.seconds, "turns": r.turns, "stats": r.stats.to_dict()} for r in result.runs],
    }


def tune_line(t: dict) -> str:
    """tune's prediction and, after the run, the measured figure beside it (report.md and the console)."""
    line = (f"Tuned tree (`--tree auto`) predicted {t['predicted_tokens_per_s']:.1f} tokens/s, tau "
            f"{t['predicted_tau']:.2f} (its speed on tune's calibration prompts, {t.get('new_tokens', '?')} new tokens, "
            f"vanilla {t['vanilla_predicted_tokens_per_s']:.1f} alongside)")
    if "measured_tokens_per_s" not in t:
        return line + "."
    line += (f"; measured here {t['measured_tokens_per_s']:.1f}, tau {t['measured_tau']:.2f} (the prediction "
             f"{100 * t['prediction_error']:+.1f}% off)")
    if "predicted_at_run_vanilla" in t:
        line += (f"; the predicted {t['predicted_speedup']:.2f}x at this run's vanilla speed is "
                 f"{t['predicted_at_run_vanilla']:.1f} tokens/s ({100 * t['prediction_error_at_run_vanilla']:+.1f}%)")
    return line + "."


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def ratio_text(x) -> str:
    """A speedup as "1.23x", or "-" where there is none (its baseline was not run)."""
    return "-" if x is None else f"{x:.2f}x"


def method_table(summaries: dict[str, MethodSummary], result: BenchResult | None = None) -> list[str]:
    """One row per method; a "vs llama.cpp" column when llama.cpp ran."""
    engine = any(s.speedup_vs_llama_cpp is not None for s in summaries.values())
    head = ("| method | tokens/s | speedup vs vanilla | vs hf |" + (" vs llama.cpp |" if engine else "")
            + " tau | draft / verify / other ms per forward | exactness |")
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for m, s in summaries.items():
        split = "/".join(f"{s.ms_per_forward[k]:.1f}" for k in ("draft", "verify", "other")) if s.ms_per_forward else "-"
        exact = "-"
        if result is not None and m in result.exactness:
            c = exactness_counts(result, m)
            exact = f"{c[EXACT]} exact, {c[NEAR_TIE]} near-tie, {c[MISMATCH]} MISMATCH"
        vs_engine = f" {ratio_text(s.speedup_vs_llama_cpp)} |" if engine else ""
        lines.append(f"| {m} | {s.tokens_per_s:.1f} | {ratio_text(s.speedup)} | {ratio_text(s.speedup_vs_hf)} |"
                     f"{vs_engine} {s.tau:.2f} | {split} | {exact} |")
    lines += [f"\n{m}: {100 * s.lookup_share:.1f}% of the accepted draft tokens came from the n-gram lookup alone"
              for m, s in summaries.items() if s.lookup_share]
    return lines


def report_markdown(data: dict, result: BenchResult, methods: list[str]) -> str:
    m = data["machine"]
    lines = ["# eaglespec bench", ""]
    if not result.complete:
        lines += ["**INCOMPLETE: interrupted; figures cover the questions every method finished.**", ""]
    lines += [f"Machine: {m['cpu']} ({m['torch_threads']} torch threads), device {m['device']}, dtype {m['dtype']}; "
              f"torch {m['torch']}, transformers {m['transformers']}, eaglespec {m['eaglespec']} ({m['commit']}).",
              f"Config: {json.dumps({k: data['config'][k] for k in ('base', 'draft', 'max_new_tokens', 'repeats', 'temperature') if k in data['config']})}",
              f"Tree: {json.dumps(data.get('tree'))}", ""]
    if data.get("dflash_block"):
        lines[-1:] = [f"DFlash block: {json.dumps(data['dflash_block'])}", ""]
    if data.get("tune"):
        lines += [tune_line(data["tune"]), ""]
    if (data.get("tune") or {}).get("dflash"):
        lines += ["DFlash draft: " + tune_line(data["tune"]["dflash"]), ""]
    if result.skipped:
        lines += [f"Skipped {len(result.skipped)} question(s) whose prompt does not fit the model's context: "
                  + ", ".join(sorted(result.skipped)), ""]
    lines += ["## Overall", "", *method_table(_summaries(result, methods), result), ""]
    for c in sorted(data["categories"]):
        lines += [f"## {c}", "", *method_table(_summaries(result, methods, c)), ""]
    lines += llama_cpp_lines(data)
    bad = [(meth, q, e) for meth, per in result.exactness.items() for q, e in per.items() if e.status != EXACT]
    if bad:
        lines += ["## Differences from vanilla (llama.cpp-eagle3: from llama.cpp without the draft)", "", "| method | question | status | turn | position | fp32 gap | run-dtype gap | threshold |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {meth} | {q} | {e.status} | {e.turn} | {e.position} | {_fmt(e.gap, '.4f')} | "
                  f"{_fmt(e.run_gap, '.4f')} | {_fmt(e.threshold, '.4f')} |"
                  for meth, q, e in bad]
    return "\n".join(lines) + "\n"


def llama_cpp_lines(data: dict, commands: bool = True) -> list[str]:
    """Where llama.cpp's time went: ms per target forward after the prefill, the drafter's cost and acceptance by
    draft position (over every request, the warm-up included), and each server's command unless `commands` is
    False."""
    engines = data.get("llama_cpp") or {}
    lines = ["## llama.cpp", ""] if engines else []
    for name, f in engines.items():
        line = f"- {name}: {_fmt(f['decode_ms_per_forward'], '.1f')} ms per target forward after the prefill"
        if "draft_calls" in f:
            depth = data["overall"].get(name, {}).get("acceptance_by_depth") or []
            line += (f"; drafter {_fmt(f['draft_ms_per_call'], '.1f')} ms per chain ({f['draft_calls']} chains), "
                     f"{100 * f['acceptance']:.1f}% of {f['draft_tokens']} drafted tokens accepted, by position "
                     + " / ".join(f"{r:.2f}" for r in depth))
        lines += [line, f"  `{f['command']}`"] if commands else [line]
    return lines + ([""] if engines else [])


def write_plots(data: dict, output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall, paths = data["overall"], []
    names = list(overall)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, [overall[n]["tokens_per_s"] for n in names], color="tab:blue")
    for bar, n in zip(bars, names):
        sp = overall[n].get("speedup")
        ax.annotate(f"{sp:.2f}x" if sp else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens/s (median of rounds)")
    ax.set_title(f"tokens/s and speedup vs vanilla ({data['machine']['dtype']})")
    paths.append(_save(fig, output / "tokens_per_s.png"))

    cats = sorted(data["categories"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ax.bar([c + i * width for c in range(len(cats))], [data["categories"][c][n]["tau"] for c in cats], width, label=n)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cats))], cats, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("tau (tokens per target forward)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, output / "tau_per_category.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
        rates = overall[n]["acceptance_by_depth"]
        if rates:
            ax.plot(range(1, len(rates) + 1), rates, marker="o", label=n)
    ax.set_xlabel("draft depth")
    ax.set_ylabel("acceptance rate | earlier depths accepted")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    paths.append(_save(fig, output / "acceptance_by_depth.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_outputs(output: Path, data: dict, result: BenchResult, methods: list[str]) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "results.json", json.dumps(data, indent=1) + "\n")
    atomic_write_text(output / "report.md", report_markdown(data, result, methods))
    return [output / "results.json", output / "report.md", *write_plots(data, output)]


def write_throughput(output: Path, batch_size: int, data: dict) -> Path:
    """`--batch-size B`'s figures as throughput_bs{B}.json."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"throughput_bs{batch_size}.json"
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def console_summary(data: dict, result: BenchResult, methods: list[str]) -> str:
    m = data["machine"]
    lines = [f"{'INCOMPLETE ' if not result.complete else ''}bench on {m['cpu']}, {m['dtype']}, "
             f"{m['torch_threads']} threads: {len(complete_questions(result.runs, methods, result.rounds))} questions "
             f"x {result.rounds} rounds"]
    lines += method_table(_summaries(result, methods), result)
    lines += llama_cpp_lines(data, commands=False)
    return "\n".join(lines)
