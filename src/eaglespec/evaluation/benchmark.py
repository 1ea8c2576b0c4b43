"""`eaglespec bench` as a Python API: load, (tune), classify the rounds' answers -> records (`BenchRun`, the
throughput figures). `commands/bench.py` draws the progress, writes the reports, prints and sets the exit code."""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eaglespec.evaluation.bench import BenchResult, BenchSetup, check_exactness, mismatches
from eaglespec.evaluation.exactness import Exactness
from eaglespec.evaluation.gguf_files import gguf_architecture
from eaglespec.evaluation.llamacpp import (
    DEFAULT_DRAFT_N_MAX,
    DEFAULT_DRAFT_P_MIN,
    DEFAULT_FLASH_ATTN,
    LlamaCppMethod,
    LlamaCppOptions,
    start_llama_cpp_methods,
    target_gguf_path,
)
from eaglespec.evaluation.methods import (
    DEFAULT_CHAIN_DEPTH,
    DEFAULT_METHODS,
    DFLASH,
    EAGLE_KIND,
    EAGLE_METHODS,
    Sampling,
    build_methods,
    draft_kind_needed,
    exactness_reference,
    llama_cpp_variant,
)
from eaglespec.evaluation.questions import load_question_set, prompt_ids

logger = logging.getLogger(__name__)
Log = Callable[[str], None]  # where progress notes go: logging here, print from `eaglespec bench`


@dataclass
class BenchOptions:
    base: str
    questions: list[str]
    draft: str | list[str] | None = None  # one draft, or an EAGLE and a DFlash one compared in the same run
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
    gguf_target: str | None = None  # the llama.cpp methods: the target as GGUF
    gguf_draft: str | list[str] | None = None  # llama.cpp-eagle3 / -dflash: our drafts as GGUF (their kind is read)
    llama_server: str | None = None  # llama-server binary (None: the pinned build in the interop cache)
    llama_threads: int | None = None  # llama.cpp's threads (None: every core)
    spec_draft_n_max: int = DEFAULT_DRAFT_N_MAX  # llama.cpp's chain length
    spec_draft_p_min: float = DEFAULT_DRAFT_P_MIN  # llama.cpp stops drafting below this draft probability
    llama_flash_attn: str = DEFAULT_FLASH_ATTN  # llama.cpp's -fa for every llama.cpp method

    def llama_cpp(self) -> LlamaCppOptions:
        return LlamaCppOptions(self.gguf_target, gguf_drafts(self), self.llama_server, self.llama_threads,
                               self.spec_draft_n_max, self.spec_draft_p_min, self.llama_flash_attn)


def listed(value: str | list[str] | None) -> list[str]:
    """A flag that takes one path or several, as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def by_kind(paths: list[str], kind_of: Callable[[str], str], flag: str) -> dict[str, str]:
    """{kind: path} with at most one path of each kind (EAGLE_KIND, DFLASH)."""
    found: dict[str, str] = {}
    for path in paths:
        kind = kind_of(path)
        if kind in found:
            raise ValueError(f"{flag}: two {kind} drafts ({found[kind]}, {path}); give at most one EAGLE and one "
                             "DFlash draft")
        found[kind] = path
    return found


def draft_dirs(opts: BenchOptions) -> dict[str, str]:
    """--draft's directories by kind."""
    return by_kind(listed(opts.draft), lambda path: DFLASH if draft_method(path) == DFLASH else EAGLE_KIND, "--draft")


def primary_draft(drafts: dict[str, str]) -> str | None:
    """The draft of the run's main generator: the EAGLE one when there are two."""
    return drafts.get(EAGLE_KIND, drafts.get(DFLASH))


def draft_method(path: str) -> str:
    """The method a draft directory's config names (eagle1, eagle3, dflash)."""
    from eaglespec.models import resolve_model_path
    from eaglespec.models.config import DraftConfig

    return DraftConfig.load(resolve_model_path(path)).method


def gguf_drafts(opts: BenchOptions) -> dict[str, str]:
    """--gguf-draft's files by kind, read from their general.architecture (dflash, else an EAGLE-3 draft)."""
    return by_kind(listed(opts.gguf_draft), lambda path: DFLASH if gguf_architecture(path) == DFLASH else EAGLE_KIND,
                   "--gguf-draft")


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


def load_setup(opts: BenchOptions, log: Log = logger.info) -> tuple[BenchSetup, dict | None]:
    """The generator (tuned with --tree auto), the questions and the methods in the order named; the llama.cpp
    methods' servers are started (checked before any tuning) and stop when `setup.resources` closes. With an EAGLE
    and a DFlash draft, the EAGLE one is the generator's and the DFlash one a second generator on the same target
    (each tuned on its own with --tree auto; tune's dict then holds the DFlash one's under "dflash")."""
    from eaglespec.decoding import SpeculativeGenerator

    check_method_inputs(opts)
    questions = load_question_set(opts.questions, opts.limit, opts.every, opts.first_turn_only)
    drafts = draft_dirs(opts)
    gen = SpeculativeGenerator.from_pretrained(opts.base, primary_draft(drafts), dtype=opts.dtype, device=opts.device,
                                               **_explicit_tree(opts))
    fim = None
    if any(q.kind == "fim" for q in questions.questions):
        from eaglespec.data.fim import detect_fim_tokens

        fim = detect_fim_tokens(gen.tokenizer)
    setup = BenchSetup(gen, questions, [], opts.max_new_tokens, opts.repeats, Sampling(opts.temperature, opts.top_p),
                       opts.seed, fim)
    if len(drafts) == 2:
        setup.dflash_generator = sibling_generator(gen, drafts[DFLASH], opts)
    tune = None
    try:
        engines = start_llama_cpp_methods(opts.methods, opts.llama_cpp(), vocabulary(gen.tokenizer), setup.resources)
        if opts.tree == "auto":
            tune = tune_setup(setup, opts, drafts, log)
        setup.methods = our_methods(setup, opts, engines)
    except BaseException:
        setup.resources.close()
        raise
    return setup, tune


def sibling_generator(gen, draft: str, opts: BenchOptions):
    """A generator on `gen`'s target and tokenizer with another draft (its own tuned tree, --tree flags over it)."""
    from eaglespec.decoding import SpeculativeGenerator, TreeConfig
    from eaglespec.models import load_draft, resolve_model_path

    model = load_draft(resolve_model_path(draft), target=gen.target, dtype=gen.target.dtype, device=gen.target.device)
    tuned = (model.config.decoding or {}).get("tree")
    return SpeculativeGenerator(gen.target, model, gen.tokenizer, TreeConfig.merged(tuned, _explicit_tree(opts)))


def tune_setup(setup: BenchSetup, opts: BenchOptions, drafts: dict[str, str], log: Log) -> dict:
    """--tree auto for each draft, each in its own child process."""
    setup.generator, tune = tune_for_workload(setup.generator, opts, setup.questions, setup.fim, log, isolated=True,
                                              draft=primary_draft(drafts))
    if setup.dflash_generator is not None:
        setup.dflash_generator, tune[DFLASH] = tune_for_workload(setup.dflash_generator, opts, setup.questions,
                                                                 setup.fim, log, isolated=True, draft=drafts[DFLASH])
    return tune


def our_methods(setup: BenchSetup, opts: BenchOptions, engines: dict) -> list:
    """Every method object in the order named: llama.cpp's `engines`, ours built on the generator of their draft."""
    second = setup.dflash_generator
    on_second = [m for m in opts.methods if second is not None and m not in engines and draft_kind_needed(m) == DFLASH]
    first = [m for m in opts.methods if m not in engines and m not in on_second]
    built = build_methods(first, setup.generator, opts.chain_depth, opts.lookup)
    if on_second:
        built += build_methods(on_second, second, opts.chain_depth, opts.lookup)
    by_name = {**{m.name: m for m in built}, **engines}
    return [by_name[name] for name in opts.methods]


def check_method_inputs(opts: BenchOptions) -> None:
    """Each draft method has a draft of its kind (--draft; --gguf-draft too for llama.cpp's), the llama.cpp methods
    a target GGUF, --calibration its --tree auto."""
    drafts = draft_dirs(opts)
    ggufs = gguf_drafts(opts) if any(llama_cpp_variant(m) is not None for m in opts.methods) else {}
    missing = [m for m in opts.methods if (kind := draft_kind_needed(m)) is not None and kind not in drafts
               and not (llama_cpp_variant(m) is not None and kind in ggufs)]
    if missing and not drafts:
        gguf = " (exported to GGUF for the run) or --gguf-draft FILE" if any(map(llama_cpp_variant, missing)) else ""
        raise ValueError(f"methods {missing} need our draft: --draft DIR{gguf}")
    if missing:
        (kind, path), = drafts.items()
        fits = DFLASH if kind == DFLASH else ", ".join(EAGLE_METHODS)
        raise ValueError(f"methods {missing} do not run a {draft_method(path)} draft; with it use {fits}, or give "
                         f"a draft of the other kind too (--draft {path} OTHER)")
    if any(llama_cpp_variant(m) is not None for m in opts.methods):
        target_gguf_path(opts.gguf_target)
    check_calibration(opts)


def vocabulary(tokenizer) -> list[str]:
    """The tokenizer's tokens by id (what a GGUF's tokenizer.ggml.tokens holds)."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def tune_for_workload(gen, opts: BenchOptions, questions, fim, log: Log = logger.info, isolated: bool = False,
                      draft: str | None = None):
    """--tree auto: tune on the calibration prompts at the benchmark's answer length and mean first-turn prompt
    length (only the lengths of its questions are used) -> (generator with the chosen tree, tune dict).

    isolated: tune in a child process that loads the models itself, so the timed rounds run in a process that
    never tuned. Measured on SmolLM2 (bf16, this 2-core CPU): right after an in-process tune, decoding in the
    same process was 13-25% slower (vanilla 27.3 -> 23.7 tokens/s, eagle 54.9 -> 43.3 on the same 5 questions),
    and neither gc.collect() nor 90 s of idling restored it; a fresh process is not affected."""
    lengths = [len(prompt_ids(q, 0, [], gen.tokenizer, fim)) for q in questions.questions]
    prompt_tokens = workload_prompt_tokens(lengths, gen.context_length, opts.max_new_tokens)
    draft = draft or next(iter(listed(opts.draft)), None)  # the child loads gen's draft from here
    result = _tune_in_child(opts, prompt_tokens, draft) if isolated else _tune(gen, opts, prompt_tokens, log)
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


def _tune_in_child(opts: BenchOptions, prompt_tokens: int | None, draft: str | None):
    """`tune_tree` in a spawned process (see tune_for_workload) -> its TuneResult; its log goes to stdout."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_tune_child, args=(opts, prompt_tokens, draft, sender), name="eaglespec-tune")
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


def _tune_child(opts: BenchOptions, prompt_tokens: int | None, draft: str | None, sender) -> None:
    import functools

    from eaglespec.decoding import SpeculativeGenerator

    try:
        gen = SpeculativeGenerator.from_pretrained(opts.base, draft, dtype=opts.dtype, device=opts.device)
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


def check_prediction(tune: dict, overall: dict, method: str | None = None) -> None:
    """Put the measured eagle (or dflash) figure next to tune's prediction, in absolute terms and at this run's vanilla speed
    (the predicted speedup times the vanilla tokens/s measured here: what the prediction says once the machine's
    own drift between the tune and the run is taken out). An error is the prediction's, relative to the measured
    figure (predicted / measured - 1)."""
    method = method or ("eagle" if "eagle" in overall else DFLASH)
    measured = overall[method]["tokens_per_s"]
    tune["measured_tokens_per_s"] = measured
    tune["measured_tau"] = overall[method]["tau"]
    tune["prediction_error"] = tune["predicted_tokens_per_s"] / measured - 1
    if "vanilla" in overall:
        tune["predicted_at_run_vanilla"] = tune["predicted_speedup"] * overall["vanilla"]["tokens_per_s"]
        tune["prediction_error_at_run_vanilla"] = tune["predicted_at_run_vanilla"] / measured - 1


@dataclass
class BenchRun:
    """What one `bench` run measured: the rounds, results.json's contents and every difference from vanilla."""

    result: BenchResult
    methods: list[str]
    data: dict  # results.json
    mismatches: list[tuple[str, str, Exactness]]  # (method, question id, first difference)


def setup_notes(setup: BenchSetup) -> list[str]:
    """Refuse a run without questions; the notes worth showing before it starts."""
    if not setup.questions.questions:
        raise ValueError("no questions to run")
    notes = []
    if any(q.kind == "chat" for q in setup.questions.questions) and setup.generator.tokenizer.chat_template is None:
        notes.append("note: the tokenizer has no chat template; chat questions are given as plain text")
    names = [m.name for m in setup.methods]
    for name in names:
        reference = exactness_reference(name)
        if reference is not None and reference not in names and setup.sampling.greedy:
            notes.append(f"note: {name}'s answers are checked against {reference}'s; without {reference} among the "
                         "methods they are not checked")
    return notes


def answer_count(setup: BenchSetup) -> int:
    """How many answers the rounds decode (the progress bar's total)."""
    return len(setup.questions.questions) * len(setup.methods) * setup.repeats


def summarise_run(setup: BenchSetup, result: BenchResult, opts: BenchOptions, tune: dict | None) -> BenchRun:
    """Classify every answer against its reference and gather results.json's contents (tune's measured figures and
    llama.cpp's own timings too)."""
    from eaglespec.evaluation.report import machine_info, results_dict

    check_exactness(setup, result)
    names = [m.name for m in setup.methods]
    gen = setup.generator
    engines = {m.name: m.engine_figures() for m in setup.methods if isinstance(m, LlamaCppMethod)}
    extra = {"tree": drafting_summary(gen), "tune": tune, **({"llama_cpp": engines} if engines else {})}
    if setup.dflash_generator is not None:
        extra["dflash_block"] = drafting_summary(setup.dflash_generator)
    data = results_dict(result, names, asdict(opts), machine_info(gen.target.device, gen.target.dtype), extra)
    method = DFLASH if gen.draft is not None and gen.draft.config.method == DFLASH else "eagle"
    if tune and method in data["overall"]:
        check_prediction(data["tune"], data["overall"], method)
    if tune and DFLASH in tune and DFLASH in data["overall"]:
        check_prediction(data["tune"][DFLASH], data["overall"], DFLASH)
    return BenchRun(result, names, data, mismatches(result))


def drafting_summary(gen) -> dict | None:
    """How the draft proposes, as results.json records it: the tree (EAGLE) or the block (DFlash)."""
    if gen.draft is None:
        return None
    if gen.draft.config.method == DFLASH:
        return {"kind": "block", "block_size": gen.draft.config.block_size, "depth": gen.drafter.depth,
                **({"lookup": gen.tree.lookup} if gen.tree.lookup else {})}
    return gen.tree.summary(gen.draft.config.method)


def throughput_methods(opts: BenchOptions) -> list[str]:
    """`--batch-size B`'s methods: those given, or all of vanilla / eagle / hf / eagle-bs1 when none were."""
    from eaglespec.evaluation.throughput import BATCH_METHODS

    if opts.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {opts.batch_size}")
    methods = list(BATCH_METHODS) if list(opts.methods) == list(DEFAULT_METHODS) else list(opts.methods)  # none given
    unknown = sorted(set(methods) - set(BATCH_METHODS))
    if unknown:
        raise ValueError(f"--batch-size measures {', '.join(BATCH_METHODS)}; not {unknown}")
    return methods


def throughput_setup(opts: BenchOptions, log: Log = logger.info) -> tuple[BenchSetup, list[list[int]]]:
    """The generator and the first-turn prompt ids that `--batch-size B` decodes."""
    setup, _ = load_setup(BenchOptions(**{**asdict(opts), "methods": ["vanilla"], "batch_size": None}), log)
    gen = setup.generator
    return setup, [prompt_ids(q, 0, [], gen.tokenizer, setup.fim) for q in setup.questions.questions]


def measure_throughput(gen, prompts: list[list[int]], methods: list[str], opts: BenchOptions,
                       progress: Callable[[], None] | None = None) -> dict:
    """Batched throughput of each method -> throughput_bs{B}.json's contents (figures, config, machine, tree)."""
    from eaglespec.evaluation.report import machine_info
    from eaglespec.evaluation.throughput import throughput_benchmark

    data = throughput_benchmark(gen, prompts, opts.max_new_tokens, opts.batch_size, methods, opts.repeats,
                                progress=progress)
    data.update(config=asdict(opts), machine=machine_info(gen.target.device, gen.target.dtype), prompts=len(prompts),
                tree=drafting_summary(gen))
    return data
