"""`eaglespec bench --base M --draft D --questions FILE...`: tau, acceptance by depth, wall-clock speedup."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from eaglespec.commands.tree_flags import add_tree_flags
from eaglespec.evaluation.benchmark import BenchOptions, BenchRun, Log
from eaglespec.evaluation.llamacpp import FLASH_ATTN_CHOICES
from eaglespec.evaluation.methods import DEFAULT_METHODS, llama_cpp_draft_kinds

if TYPE_CHECKING:
    import torch

DEFAULTS = BenchOptions(base="", questions=[])
EXIT_MISMATCH = 1  # an answer differs from vanilla beyond a near-tie
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or stories260K / smollm2-135m)")
    p.add_argument("--draft", nargs="+", default=None, metavar="DIR",
                   help="draft directory (needed by the draft methods); an EAGLE and a DFlash draft compare in one "
                        "run: the eagle methods and llama.cpp-eagle3 take the EAGLE one, dflash and "
                        "llama.cpp-dflash the DFlash one")
    p.add_argument("--questions", nargs="+", required=True,
                   help="MT-bench / Spec-Bench question.jsonl, HumanEval(.gz), HumanEval-infilling, or plain text lines")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma list of vanilla, eagle, eagle-nolookup, eagle-chain, eagle-default, lookup, hf, pld, "
                        "assisted=PATH, dflash, llama.cpp, llama.cpp-eagle3, llama.cpp-dflash (llama.cpp-eagle3:n2:p0.5: "
                        "with its own --spec-draft-n-max / --spec-draft-p-min)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="interleaved rounds (median reported)")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    add_tree_flags(p, allow_auto=True)  # eagle's tree; eagle-nolookup is it without --lookup
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="--tree auto tunes on the first turns of this question file (any --questions schema; never "
                        "one of the benchmark's files) instead of the built-in prompts")
    p.add_argument("--chain-depth", type=int, default=DEFAULTS.chain_depth, help="depth of eagle-chain")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N questions of each file")
    p.add_argument("--every", type=int, default=DEFAULTS.every, help="every n-th question of each file")
    p.add_argument("--first-turn-only", action="store_true", help="multi-turn questions: first turn only")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--output", default=DEFAULTS.output, help="directory for results.json, report.md and plots")
    add_llama_cpp_flags(p.add_argument_group("llama.cpp methods (llama.cpp, llama.cpp-eagle3, llama.cpp-dflash; greedy)"))
    p.add_argument("--batch-size", type=int, default=None,
                   help="throughput mode: batched vanilla / eagle / hf generate and eagle at batch size 1 on the "
                        "first turns (total new tokens / wall time, per-sequence latency)")


def add_llama_cpp_flags(g) -> None:
    g.add_argument("--gguf-target", default=None, metavar="FILE",
                   help="the target as GGUF (llama.cpp's convert_hf_to_gguf.py of --base; any quantization)")
    g.add_argument("--gguf-draft", nargs="+", default=None, metavar="FILE",
                   help="our drafts as GGUF for llama.cpp-eagle3 / llama.cpp-dflash, told apart by their architecture "
                        "(default: --draft exported into --output, f32 with --dtype float32, else bf16)")
    g.add_argument("--llama-server", default=None, metavar="PATH",
                   help="llama-server binary (default: the pinned build of tests/interop/build_envs.sh llama.cpp)")
    g.add_argument("--llama-threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    g.add_argument("--spec-draft-n-max", type=int, default=DEFAULTS.spec_draft_n_max,
                   help="llama.cpp's draft chain length")
    g.add_argument("--spec-draft-p-min", type=float, default=DEFAULTS.spec_draft_p_min,
                   help="llama.cpp stops a chain where the draft's probability falls below this")
    g.add_argument("--llama-flash-attn", choices=FLASH_ATTN_CHOICES, default=DEFAULTS.llama_flash_attn,
                   help="llama.cpp's -fa for every llama.cpp method (default: llama.cpp's own); off makes its "
                        "answers with the draft identical to those without it (its flash attention rounds a "
                        "one-token decode otherwise than a verification)")


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    opts = BenchOptions(base=args.base, draft=one_or_list(args.draft), questions=args.questions, methods=methods,
                        max_new_tokens=args.max_new_tokens, repeats=args.repeats, temperature=args.temperature,
                        top_p=args.top_p, tree=args.tree, depth=args.depth, draft_top_k=args.draft_top_k,
                        total_tokens=args.total_tokens, lookup=args.lookup, chain_depth=args.chain_depth, dtype=args.dtype,
                        device=args.device, limit=args.limit, every=args.every, first_turn_only=args.first_turn_only,
                        seed=args.seed, output=args.output, batch_size=args.batch_size,
                        calibration=args.calibration, gguf_target=args.gguf_target,
                        gguf_draft=one_or_list(args.gguf_draft),
                        llama_server=args.llama_server, llama_threads=args.llama_threads,
                        spec_draft_n_max=args.spec_draft_n_max, spec_draft_p_min=args.spec_draft_p_min,
                        llama_flash_attn=args.llama_flash_attn)
    return run_benchmark(opts)


def one_or_list(values: list[str] | None) -> str | list[str] | None:
    """A flag of one path or several: one stays a string (as the Python API takes it)."""
    return values[0] if values is not None and len(values) == 1 else values


def with_draft_gguf(opts: BenchOptions, log: Log = print) -> BenchOptions:
    """The llama.cpp methods with our draft: each draft of a kind they run and --gguf-draft does not give is
    exported from --draft to GGUF into the output directory first."""
    from eaglespec.evaluation.benchmark import draft_dirs, gguf_drafts, listed

    given, dirs = gguf_drafts(opts), draft_dirs(opts)
    wanted = [k for k in sorted(llama_cpp_draft_kinds(opts.methods)) if k not in given and k in dirs]
    if not wanted:
        return opts
    from eaglespec.export import export_gguf

    dtype = "f32" if opts.dtype == "float32" else "bf16"
    made = []
    for kind in wanted:
        path = Path(opts.output) / f"draft-{kind}-{dtype}.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(dirs[kind], path, opts.base, dtype=dtype, overwrite=True)  # bench's own file, remade each run
        log(f"llama.cpp: exported {dirs[kind]} to {path} ({dtype})")
        made.append(str(path))
    return dataclasses.replace(opts, gguf_draft=listed(opts.gguf_draft) + made)


def run_benchmark(opts: BenchOptions, log: Log = print) -> int:
    """Run, write results.json / report.md / plots into opts.output, print the summary; the exit code says
    whether a MISMATCH was found (1) or the run was interrupted (130)."""
    from tqdm import tqdm

    from eaglespec.evaluation.bench import run_rounds
    from eaglespec.evaluation.benchmark import (
        answer_count,
        check_method_inputs,
        load_setup,
        setup_notes,
        summarise_run,
    )
    from eaglespec.evaluation.report import write_outputs

    if opts.batch_size is not None:
        return run_throughput(opts, log)
    check_method_inputs(opts)  # before exporting a draft for llama.cpp
    opts = with_draft_gguf(opts, log)
    setup, tune = load_setup(opts, log)
    with setup.resources:  # llama.cpp's servers stop here, after their timings are read
        for note in setup_notes(setup):
            log(note)
        with tqdm(total=answer_count(setup), unit="answer", desc="bench") as bar:
            result = run_rounds(setup, progress=bar.update)
        for qid, why in result.skipped.items():
            log(f"skipped question {qid}: {why}")
        bench = summarise_run(setup, result, opts, tune)
    paths = write_outputs(Path(opts.output), bench.data, result, bench.methods)
    print_summary(bench, paths, log)
    print_mismatches(bench, setup.generator.target.dtype, log)
    if not result.complete:
        log("interrupted: the outputs hold what was measured so far and are marked incomplete")
        return EXIT_INTERRUPTED
    return EXIT_MISMATCH if bench.mismatches else 0


def print_summary(bench: BenchRun, paths: list[Path], log: Log) -> None:
    """The one-screen summary, tune's prediction beside the measured figure, and the files written."""
    from eaglespec.evaluation.report import console_summary, tune_line

    log(console_summary(bench.data, bench.result, bench.methods))
    tune = bench.data.get("tune") or {}
    for prefix, figures in (("", tune), ("DFlash draft: ", tune.get("dflash") or {})):
        if "measured_tokens_per_s" in figures:
            log(prefix + tune_line(figures))
    log("wrote " + ", ".join(str(p) for p in paths))


def print_mismatches(bench: BenchRun, dtype: torch.dtype, log: Log) -> None:
    """One line per answer that differs from vanilla beyond a near-tie, with the logit gaps that decided it."""
    for method, qid, e in bench.mismatches:
        log(f"!!! MISMATCH: {method} on {qid}: turn {e.turn}, token {e.position}: vanilla {e.expected}, got {e.got}"
            + (f", fp32 logit gap {e.gap:.4f}" if e.gap is not None else "")
            + (f", {dtype} gap {e.run_gap:.4f}" if e.run_gap is not None else "")
            + (f" > near-tie threshold {e.threshold:.4f}" if e.threshold is not None else ""))


def run_throughput(opts: BenchOptions, log: Log = print) -> int:
    """`--batch-size B`: batched throughput (greedy, first turns) of vanilla / eagle / hf / eagle-bs1."""
    from tqdm import tqdm

    from eaglespec.evaluation.benchmark import measure_throughput, throughput_methods, throughput_setup
    from eaglespec.evaluation.report import write_throughput

    methods = throughput_methods(opts)
    setup, prompts = throughput_setup(opts, log)
    with tqdm(total=len(methods) * opts.repeats, unit="run", desc=f"bench batch {opts.batch_size}") as bar:
        data = measure_throughput(setup.generator, prompts, methods, opts, progress=bar.update)
    path = write_throughput(Path(opts.output), opts.batch_size, data)
    print_throughput(data, opts, len(prompts), log)
    log(f"wrote {path}")
    return 0


def print_throughput(data: dict, opts: BenchOptions, prompts: int, log: Log) -> None:
    """The throughput table: tokens/s per method and its ratios to vanilla, hf and eagle at batch size 1."""
    from eaglespec.evaluation.report import ratio_text

    log(f"batch size {opts.batch_size}, {prompts} prompts, {opts.max_new_tokens} new tokens at most:")
    log("| method | tokens/s | vs vanilla (same batch) | vs hf | vs eagle bs1 | latency median / p90 s |")
    log("|---|---|---|---|---|---|")
    for m, f in data["methods"].items():
        ratios = " | ".join(ratio_text(f.get(f"speedup_vs_{base}")) for base in ("vanilla", "hf", "eagle-bs1"))
        log(f"| {m} | {f['tokens_per_s']:.1f} | {ratios} | {f['latency_median_s']:.1f} / {f['latency_p90_s']:.1f} |")
