"""`eaglespec bench` as a Python API: load, (tune), run the interleaved rounds, classify, write the reports."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eaglespec.evaluation.bench import BenchSetup, check_exactness, mismatches, run_rounds
from eaglespec.evaluation.methods import (
    DEFAULT_CHAIN_DEPTH,
    DEFAULT_METHODS,
    DRAFT_METHODS,
    Sampling,
    build_methods,
)
from eaglespec.evaluation.questions import load_question_set, prompt_ids

EXIT_MISMATCH = 1
EXIT_INTERRUPTED = 130


@dataclass
class BenchOptions:
    base: str
    questions: list[str]
    draft: str | None = None
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    max_new_tokens: int = 256
    repeats: int = 3
    temperature: float = 0.0
    top_p: float = 1.0
    tree: str | None = None  # dynamic | static | chain | auto; None = the draft's tuned tree, else dynamic
    depth: int | None = None
    draft_top_k: int | None = None
    total_tokens: int | None = None
    lookup: int | None = None  # n-gram lookup tokens merged into eagle's tree (None: the tuned tree's)
    chain_depth: int = DEFAULT_CHAIN_DEPTH
    dtype: str | None = None
    device: str | None = None
    limit: int | None = None  # first N questions of each file
    every: int = 1  # every n-th question of each file
    first_turn_only: bool = False
    seed: int = 0
    output: str = "bench"
    batch_size: int | None = None  # throughput mode: batched decoding of every question's first turn
    calibration: str | None = None  # --tree auto: tune on this question file's first turns (built-in prompts if None)


def _explicit_tree(opts: BenchOptions) -> dict:
    tree = {"kind": None if opts.tree == "auto" else opts.tree, "depth": opts.depth, "top_k": opts.draft_top_k,
            "total_tokens": opts.total_tokens, "lookup": opts.lookup}
    return {k: v for k, v in tree.items() if v is not None}


def check_calibration(opts: BenchOptions) -> None:
    if opts.calibration is None:
        return
    if opts.tree != "auto":
        raise ValueError("--calibration is what --tree auto tunes on; give --tree auto with it")
    if Path(opts.calibration).resolve() in {Path(q).resolve() for q in opts.questions}:
        raise ValueError(f"--calibration {opts.calibration}: a tree tuned on the benchmark's own questions would "
                         f"overstate the speed; calibrate on other prompts")


def load_setup(opts: BenchOptions, log=print) -> tuple[BenchSetup, dict | None]:
    from eaglespec.decoding import SpeculativeGenerator

    needs_draft = [m for m in opts.methods if m in DRAFT_METHODS]
    if needs_draft and opts.draft is None:
        raise ValueError(f"methods {needs_draft} need --draft")
    check_calibration(opts)
    questions = load_question_set(opts.questions, opts.limit, opts.every, opts.first_turn_only)
    gen = SpeculativeGenerator.from_pretrained(opts.base, opts.draft, dtype=opts.dtype, device=opts.device,
                                               **_explicit_tree(opts))
    fim = None
    if any(q.kind == "fim" for q in questions.questions):
        from eaglespec.data.fim import detect_fim_tokens

        fim = detect_fim_tokens(gen.tokenizer)
    tune = None
    if opts.tree == "auto":
        gen, tune = tune_for_workload(gen, opts, questions, fim, log, isolated=True)
    methods = build_methods(opts.methods, gen, opts.chain_depth, opts.lookup)
    sampling = Sampling(opts.temperature, opts.top_p)
    return BenchSetup(gen, questions, methods, opts.max_new_tokens, opts.repeats, sampling, opts.seed, fim), tune


def tune_for_workload(gen, opts: BenchOptions, questions, fim, log=print, isolated: bool = False):
    """--tree auto: tune on the calibration prompts at the benchmark's answer length and mean first-turn prompt
    length (only the lengths of its questions are used) -> (generator with the chosen tree, tune dict).

    isolated: tune in a child process that loads the models itself, so the timed rounds run in a process that
    never tuned. Measured on SmolLM2 (bf16, this 2-core CPU): right after an in-process tune, decoding in the
    same process was 13-25% slower (vanilla 27.3 -> 23.7 tokens/s, eagle 54.9 -> 43.3 on the same 5 questions),
    and neither gc.collect() nor 90 s of idling restored it; a fresh process is not affected."""
    lengths = [len(prompt_ids(q, 0, [], gen.tokenizer, fim)) for q in questions.questions]
    prompt_tokens = workload_prompt_tokens(lengths, gen.context_length, opts.max_new_tokens)
    result = _tune_in_child(opts, prompt_tokens) if isolated else _tune(gen, opts, prompt_tokens, log)
    gen = gen.with_tree(result.tree_config())
    tune = {k: v for k, v in result.to_dict().items() if k != "candidates"}
    tune["predicted_speedup"] = result.predicted_speedup
    tune["top_candidates"] = [asdict(c) for c in result.candidates[:10]]
    log(f"--tree auto chose {json.dumps(result.choice)}: predicted {result.predicted_tokens_per_s:.1f} tokens/s "
        f"(tau {result.predicted_tau:.2f}; vanilla {result.vanilla_predicted_tokens_per_s:.1f}), as measured on "
        f"tune's calibration prompts (mean prompt {result.prompt_tokens:.0f} tokens; the benchmark's questions that fit "
        f"the context: {prompt_tokens})")
    if result.vanilla_note():
        log(result.vanilla_note())
    return gen, tune


def _tune(gen, opts: BenchOptions, prompt_tokens: int | None, log):
    from eaglespec.evaluation.tune import calibration_prompts, tune_tree

    return tune_tree(gen, calibration_prompts(gen, opts.calibration), log=log, new_tokens=opts.max_new_tokens,
                     prompt_tokens=prompt_tokens)


def _tune_in_child(opts: BenchOptions, prompt_tokens: int | None):
    """`tune_tree` in a spawned process (see tune_for_workload) -> its TuneResult; its log goes to stdout."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_tune_child, args=(opts, prompt_tokens, sender), name="eaglespec-tune")
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = RuntimeError(f"--tree auto: the tuning process ended without a result (exit code {child.exitcode})")
    finally:
        child.join()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _tune_child(opts: BenchOptions, prompt_tokens: int | None, sender) -> None:
    import functools

    from eaglespec.decoding import SpeculativeGenerator

    try:
        gen = SpeculativeGenerator.from_pretrained(opts.base, opts.draft, dtype=opts.dtype, device=opts.device)
        sender.send(_tune(gen, opts, prompt_tokens, functools.partial(print, flush=True)))
    except Exception as error:  # sent back: the parent raises it where an in-process tune would have
        import traceback

        traceback.print_exc()  # where it broke: the traceback does not travel with the exception
        try:
            sender.send(error)
        except Exception:  # an error that does not pickle
            sender.send(RuntimeError(f"--tree auto: tuning failed: {type(error).__name__}: {error}"))
    finally:
        sender.close()


def workload_prompt_tokens(lengths: list[int], context_length: int, new_tokens: int) -> int | None:
    """The prompt length tune should time at: the mean over the questions bench will run (those shorter than the
    context; longer ones are skipped), capped so that a calibration answer of `new_tokens` still fits. None (tune's
    prompts as they are) when no question fits or no prompt leaves room for such an answer."""
    fitting = [n for n in lengths if n < context_length]
    if not fitting or new_tokens >= context_length:
        return None
    return min(round(statistics.fmean(fitting)), context_length - new_tokens)


def check_prediction(tune: dict, overall: dict) -> None:
    """Put the measured eagle figure next to tune's prediction, in absolute terms and at this run's vanilla speed
    (the predicted speedup times the vanilla tokens/s measured here: what the prediction says once the machine's
    own drift between the tune and the run is taken out). An error is the prediction's, relative to the measured
    figure (predicted / measured - 1)."""
    measured = overall["eagle"]["tokens_per_s"]
    tune["measured_tokens_per_s"] = measured
    tune["measured_tau"] = overall["eagle"]["tau"]
    tune["prediction_error"] = tune["predicted_tokens_per_s"] / measured - 1
    if "vanilla" in overall:
        tune["predicted_at_run_vanilla"] = tune["predicted_speedup"] * overall["vanilla"]["tokens_per_s"]
        tune["prediction_error_at_run_vanilla"] = tune["predicted_at_run_vanilla"] / measured - 1


def run_benchmark(opts: BenchOptions, log=print) -> int:
    """Run, write results.json / report.md / plots into opts.output, print the summary; the exit code says
    whether a MISMATCH was found (1) or the run was interrupted (130)."""
    from tqdm import tqdm

    from eaglespec.evaluation.report import console_summary, machine_info, results_dict, tune_line, write_outputs

    if opts.batch_size is not None:
        return run_throughput(opts, log)
    setup, tune = load_setup(opts, log)
    if not setup.questions.questions:
        raise ValueError("no questions to run")
    if any(q.kind == "chat" for q in setup.questions.questions) and setup.generator.tokenizer.chat_template is None:
        log("note: the tokenizer has no chat template; chat questions are given as plain text")
    total = len(setup.questions.questions) * len(setup.methods) * setup.repeats
    with tqdm(total=total, unit="answer", desc="bench") as bar:
        result = run_rounds(setup, progress=bar.update)
    for qid, why in result.skipped.items():
        log(f"skipped question {qid}: {why}")
    check_exactness(setup, result)
    names = [m.name for m in setup.methods]
    tree = setup.generator.tree.summary(setup.generator.draft.config.method) if setup.generator.draft else None
    data = results_dict(result, names, asdict(opts), machine_info(setup.generator.target.device,
                                                                 setup.generator.target.dtype),
                        {"tree": tree, "tune": tune})
    if tune and "eagle" in data["overall"]:
        check_prediction(data["tune"], data["overall"])
    paths = write_outputs(Path(opts.output), data, result, names)
    log(console_summary(data, result, names))
    if tune and "eagle" in data["overall"]:
        log(tune_line(data["tune"]))
    log("wrote " + ", ".join(str(p) for p in paths))
    bad = mismatches(result)
    for method, qid, e in bad:
        log(f"!!! MISMATCH: {method} on {qid}: turn {e.turn}, token {e.position}: vanilla {e.expected}, got {e.got}"
            + (f", fp32 logit gap {e.gap:.4f}" if e.gap is not None else "")
            + (f", {setup.generator.target.dtype} gap {e.run_gap:.4f}" if e.run_gap is not None else "")
            + (f" > near-tie threshold {e.threshold:.4f}" if e.threshold is not None else ""))
    if not result.complete:
        log("interrupted: the outputs hold what was measured so far and are marked incomplete")
        return EXIT_INTERRUPTED
    return EXIT_MISMATCH if bad else 0


def run_throughput(opts: BenchOptions, log=print) -> int:
    """`--batch-size B`: batched throughput (greedy, first turns) of vanilla / eagle / hf / eagle-bs1."""
    from tqdm import tqdm

    from eaglespec._io import atomic_write_text
    from eaglespec.evaluation.questions import prompt_ids
    from eaglespec.evaluation.report import machine_info
    from eaglespec.evaluation.throughput import BATCH_METHODS, throughput_benchmark

    if opts.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {opts.batch_size}")
    methods = list(BATCH_METHODS) if list(opts.methods) == list(DEFAULT_METHODS) else list(opts.methods)  # none given
    unknown = sorted(set(methods) - set(BATCH_METHODS))
    if unknown:
        raise ValueError(f"--batch-size measures {', '.join(BATCH_METHODS)}; not {unknown}")
    setup, _ = load_setup(BenchOptions(**{**asdict(opts), "methods": ["vanilla"], "batch_size": None}), log)
    gen = setup.generator
    prompts = [prompt_ids(q, 0, [], gen.tokenizer, setup.fim) for q in setup.questions.questions]
    with tqdm(total=len(methods) * opts.repeats, unit="run", desc=f"bench batch {opts.batch_size}") as bar:
        data = throughput_benchmark(gen, prompts, opts.max_new_tokens, opts.batch_size, methods, opts.repeats,
                                    progress=bar.update)
    data.update(config=asdict(opts), machine=machine_info(gen.target.device, gen.target.dtype), prompts=len(prompts),
                tree=gen.tree.summary(gen.draft.config.method) if gen.draft else None)
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"throughput_bs{opts.batch_size}.json", json.dumps(data, indent=1) + "\n")
    log(f"batch size {opts.batch_size}, {len(prompts)} prompts, {opts.max_new_tokens} new tokens at most:")
    log("| method | tokens/s | vs vanilla (same batch) | vs hf | vs eagle bs1 | latency median / p90 s |")
    log("|---|---|---|---|---|---|")
    for m, f in data["methods"].items():
        log(f"| {m} | {f['tokens_per_s']:.1f} | {f.get('speedup_vs_vanilla', float('nan')):.2f}x | "
            f"{f.get('speedup_vs_hf', float('nan')):.2f}x | {f.get('speedup_vs_eagle-bs1', float('nan')):.2f}x | "
            f"{f['latency_median_s']:.1f} / {f['latency_p90_s']:.1f} |")
    log(f"wrote {out / f'throughput_bs{opts.batch_size}.json'}")
    return 0
