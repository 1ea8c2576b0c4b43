"""`eaglespec bench`: every method on every question, interleaved repeats, medians, exactness.

Protocol: one warm-up pass (first question, every method, not recorded); then for each question, `repeats`
rounds in which every method answers it, the order reversed every other round (A B C, C B A, ...), so slow
phases of a shared machine hit every method alike. A method's tokens/s in round r is its new tokens over
its seconds summed over the questions; the reported figure is the median over rounds, and a speedup is the
ratio of two medians from the same run. tau = new tokens / target forwards (vanilla: 1.0). Greedy outputs
are classified against vanilla's (exact / near-tie / MISMATCH, see `exactness`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from eaglespec.decoding import GenerationStats, PromptTooLong, SpeculativeGenerator, sync
from eaglespec.evaluation.exactness import MISMATCH, Exactness, classify, next_logits_fn
from eaglespec.evaluation.methods import Sampling, exactness_reference
from eaglespec.evaluation.questions import Question, QuestionSet, prompt_ids

WARMUP_MAX_NEW_TOKENS = 32


@dataclass
class QuestionRun:
    """One method's answer to one question (all turns) in one round."""

    question_id: str
    category: str
    method: str
    round: int
    prompts: list[list[int]]  # per turn
    turns: list[list[int]]  # new token ids per turn
    seconds: float
    stats: GenerationStats  # summed over the turns
    split_known: bool


@dataclass
class MethodSummary:
    method: str
    tokens_per_s: float  # median over rounds
    tokens_per_s_rounds: list[float]
    new_tokens: int  # over all rounds
    target_forwards: int
    tau: float
    acceptance_by_depth: list[float]  # P(depth d accepted | depths < d accepted)
    ms_per_forward: dict[str, float] | None  # draft / verify / other, per target forward
    speedup: float | None = None  # vs vanilla, ratio of medians
    speedup_vs_hf: float | None = None
    speedup_vs_llama_cpp: float | None = None  # vs the `llama.cpp` method (llama.cpp without a draft)
    lookup_share: float | None = None  # of the accepted draft tokens, the share only the n-gram lookup proposed


@dataclass
class BenchResult:
    runs: list[QuestionRun] = field(default_factory=list)
    exactness: dict[str, dict[str, Exactness]] = field(default_factory=dict)  # method -> question -> status
    complete: bool = True
    rounds: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # question id -> why (a prompt beyond the context)


def merge_stats(total: GenerationStats, part: GenerationStats) -> None:
    total.new_tokens += part.new_tokens
    total.target_forwards += part.target_forwards
    total.accept_lengths += part.accept_lengths
    total.lookup_tokens += part.lookup_tokens
    for d, (n, a) in enumerate(zip(part.depth_attempts, part.depth_accepts)):
        if d >= len(total.depth_attempts):
            total.depth_attempts.append(0)
            total.depth_accepts.append(0)
        total.depth_attempts[d] += n
        total.depth_accepts[d] += a
    total.draft_time += part.draft_time
    total.verify_time += part.verify_time
    total.other_time += part.other_time


@dataclass
class BenchSetup:
    generator: SpeculativeGenerator
    questions: QuestionSet
    methods: list  # evaluation.methods objects
    max_new_tokens: int
    repeats: int
    sampling: Sampling
    seed: int = 0
    fim: object = None  # FimTokens when a question is FIM
    resources: ExitStack = field(default_factory=ExitStack)  # what the methods hold open (llama.cpp's servers)
    dflash_generator: SpeculativeGenerator | None = None  # the DFlash draft's, beside an EAGLE one (--draft A B)


def answer(setup: BenchSetup, method, question: Question, round_: int, max_new_tokens: int | None = None
           ) -> QuestionRun:
    """All turns of `question` by `method`; turn k+1 sees the method's own answers to turns 1..k."""
    gen, device = setup.generator, setup.generator.target.device
    total, prompts, turns, answers, seconds, split = GenerationStats(), [], [], [], 0.0, True
    for turn in range(question.num_turns):
        ids = prompt_ids(question, turn, answers, gen.tokenizer, setup.fim)
        seed = setup.seed + 1000 * round_ + turn  # the same draws for every method
        sync(device)
        start = time.perf_counter()
        run = method.run(ids, max_new_tokens or setup.max_new_tokens, setup.sampling, seed)
        sync(device)
        seconds += time.perf_counter() - start
        merge_stats(total, run.stats)
        split &= run.split_known
        prompts.append(ids)
        turns.append(run.token_ids)
        answers.append(gen.tokenizer.decode(run.token_ids, skip_special_tokens=True))
    return QuestionRun(question.id, question.category, method.name, round_, prompts, turns, seconds, total, split)


def run_rounds(setup: BenchSetup, progress: Callable[[], None] | None = None) -> BenchResult:
    """Warm-up, then the interleaved rounds; Ctrl-C keeps what was measured (result.complete False)."""
    result = BenchResult(rounds=setup.repeats)
    _warm_up(setup)
    try:
        for qi, question in enumerate(setup.questions.questions):
            try:
                result.runs += _question_rounds(setup, qi, question, progress)
            except PromptTooLong as e:  # every method's runs of this question are dropped, not only one's
                result.skipped[question.id] = str(e)
    except KeyboardInterrupt:
        result.complete = False
    return result


def _warm_up(setup: BenchSetup) -> None:
    """Every method answers the first question that fits the context (short answers, not measured)."""
    for question in setup.questions.questions:
        try:
            for method in setup.methods:
                answer(setup, method, question, -1, WARMUP_MAX_NEW_TOKENS)
            return
        except PromptTooLong:
            continue
    raise ValueError(f"no question fits the model's context of {setup.generator.context_length} tokens")


def _question_rounds(setup: BenchSetup, qi: int, question: Question, progress: Callable[[], None] | None
                     ) -> list[QuestionRun]:
    """`setup.repeats` rounds of every method on one question, the order reversed every other round."""
    runs = []
    for r in range(setup.repeats):
        order = setup.methods if (qi + r) % 2 == 0 else setup.methods[::-1]
        for method in order:
            runs.append(answer(setup, method, question, r))
            if progress is not None:
                progress()
    return runs


# -------------------------------------------------------------------------------------------------
# Aggregation
# -------------------------------------------------------------------------------------------------

def complete_questions(runs: list[QuestionRun], methods: list[str], rounds: int) -> set[str]:
    """Questions every method answered in every round (an interrupted run counts only these)."""
    seen: dict[str, set] = {}
    for run in runs:
        seen.setdefault(run.question_id, set()).add((run.method, run.round))
    return {q for q, done in seen.items() if len(done) == len(methods) * rounds}


def summarise(runs: list[QuestionRun], method: str, rounds: int) -> MethodSummary:
    """Figures of one method over `runs` (already restricted to complete questions / a category)."""
    mine = [r for r in runs if r.method == method]
    per_round = []
    for k in range(rounds):
        rr = [r for r in mine if r.round == k]
        seconds = sum(r.seconds for r in rr)
        per_round.append(sum(r.stats.new_tokens for r in rr) / seconds if seconds else 0.0)
    total = GenerationStats()
    for r in mine:
        merge_stats(total, r.stats)
    split = None
    if mine and all(r.split_known for r in mine) and total.target_forwards:
        n = total.target_forwards
        split = {"draft": 1e3 * total.draft_time / n, "verify": 1e3 * total.verify_time / n,
                 "other": 1e3 * total.other_time / n}
    accepted = sum(total.accept_lengths)
    lookup_share = total.lookup_tokens / accepted if total.lookup_tokens and accepted else None
    return MethodSummary(method, statistics.median(per_round) if per_round else 0.0, per_round, total.new_tokens,
                         total.target_forwards, total.tau, total.acceptance_rate_per_depth, split,
                         lookup_share=lookup_share)


def summarise_all(runs: list[QuestionRun], methods: list[str], rounds: int) -> dict[str, MethodSummary]:
    out = {m: summarise(runs, m, rounds) for m in methods}
    for key, base in (("speedup", "vanilla"), ("speedup_vs_hf", "hf"), ("speedup_vs_llama_cpp", "llama.cpp")):
        if base in out and out[base].tokens_per_s:
            for s in out.values():
                setattr(s, key, s.tokens_per_s / out[base].tokens_per_s)
    return out


def check_exactness(setup: BenchSetup, result: BenchResult) -> None:
    """Classify every greedy method's round-0 answer against its reference's (`exactness_reference`: vanilla's, or
    llama.cpp's for llama.cpp with the draft), per question; near-ties are judged by our target's logits."""
    if not setup.sampling.greedy:
        return
    by_key = {(r.method, r.question_id): r for r in result.runs if r.round == 0}
    judge = exactness_judge(setup.generator)
    for (method, qid), run in sorted(by_key.items()):
        ref = by_key.get((exactness_reference(method), qid))
        if method == "vanilla" or ref is None:
            continue
        result.exactness.setdefault(method, {})[qid] = judge(ref.prompts, ref.turns, run.turns)


def exactness_judge(generator: SpeculativeGenerator):
    """`classify` against vanilla for this generator's target: fp32 logits (the target reloaded in fp32 the first
    time two answers differ) and the run dtype's own."""
    fp32 = []

    def judge(prompts: list[list[int]], vanilla_turns: list[list[int]], method_turns: list[list[int]]) -> Exactness:
        if not fp32 and vanilla_turns != method_turns:
            fp32.append(next_logits_fn(fp32_model(generator)))
        return classify(prompts, vanilla_turns, method_turns, generator.target.dtype,
                        fp32[0] if fp32 else (lambda ids: None), next_logits_fn(generator.target.model))

    return judge


def fp32_model(generator: SpeculativeGenerator) -> torch.nn.Module:
    """The target in fp32 (itself when it already is; else reloaded from its directory)."""
    model = generator.target.model
    if generator.target.dtype == torch.float32:
        return model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.config._name_or_path, dtype=torch.float32).to(
        generator.target.device).eval()


def mismatches(result: BenchResult) -> list[tuple[str, str, Exactness]]:
    return [(m, q, e) for m, per_q in result.exactness.items() for q, e in per_q.items() if e.status == MISMATCH]
