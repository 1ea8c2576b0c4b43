"""Choose the draft tree for this hardware by measurement (`--tree auto`, `eaglespec tune`); for a DFlash draft,
its chain length (`tune_block`, steps 1-3 there, then step 4 below).

1. Cost model, measured here: the target's forward over T tokens (T in tune_cost.FORWARD_TOKEN_COUNTS, timed in
   interleaved rounds) on top of a cached calibration sequence (prompt and continuation: the context decoding
   runs at), the draft's `propose` for every candidate tree, and the per-step rest (catch-up, acceptance,
   cache surgery, stopping) from one real run.
2. Acceptance, measured on calibration prompts (never the benchmark's): the target's greedy continuation of each
   prompt gives decoding states; at each state every candidate tree is drafted by the decoder's own `Drafter`
   and the accepted length is what greedy verification would accept (the path matching the continuation).
   tau = mean (accepted + 1) over states every few tokens: the draft's acceptance varies from token to token, so
   positions sampled evenly average as decoding does (SmolLM2, 10 MT-bench answers: 1.73, decoded 1.74).
   With n-gram lookup that fails: a copied loop accepts a lot at every position, but decoding crosses it in a few
   steps (the same answers, 8 lookup tokens: mean 2.61, decoded 2.21). So the WALKED best trees are scored again,
   with and without lookup (LOOKUP_TOKENS; `decoding.lookup`), by replaying decoding: from a continuation's first
   state to the state after the accepted tokens and the bonus token, to its end; tau = tokens / steps.
3. The cost model ranks every candidate: tau / (propose + forward(mean tree size) + rest).
4. The model's best FINALISTS trees (and its best without lookup), the reference default tree and the depth-4
   chain are then timed by real
   decoding of the calibration prompts, interleaved with vanilla (A B C, then C B A); the fastest measured tree
   wins, and its measured tokens/s is the prediction `bench --tree auto` compares with. The model alone
   predicted 32.9 tokens/s for SmolLM2 on this CPU where bench measured 22.5, so it only short-lists.
Everything runs at the answer length the decoding will use (`new_tokens`; bench passes its --max-new-tokens):
acceptance changes along an answer and every step costs more as the context grows. For the same reason, given
the workload's mean prompt length (`prompt_tokens`; bench passes its questions' first-turn mean), each shorter
calibration prompt is preceded by the other calibration prompts' tokens up to that length (`with_context`), so
vanilla and the trees are timed at the context the workload runs at: on SmolLM2 calibration prompts of at most
173 tokens against MT-bench prompts of up to 402 made vanilla 10% faster in tune than in the benchmark.
Sampling runs accept less than greedy; the choice is made on greedy acceptance. The prediction holds for text
like the calibration prompts: a benchmark of another domain accepts more or less.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.tree import dynamic_capacity
from eaglespec.decoding.verify import accepted_length_on_path
from eaglespec.evaluation.tune_block import rank_blocks
from eaglespec.evaluation.tune_cost import Candidate, interpolate, step_rest_ms, time_forwards

CALIBRATION_NEW_TOKENS = 64  # answer length of `eaglespec tune` unless given
CALIBRATION_PROMPTS = 8  # prompts taken (evenly spread) from a --calibration file
STATE_STRIDE = 3  # the cost model's sample: states every few tokens of a CALIBRATION_NEW_TOKENS continuation
#                  (scaled with it); replays use the states at every position
MAX_TUNE_DEPTH = 8
DYNAMIC_TOP_K = (2, 4, 8)
DYNAMIC_DEPTHS = (3, 4, 5, 6, 7)
DYNAMIC_TOTALS = (8, 12, 16, 24, 32, 48, 64)
FINALISTS = 3  # the cost model's best trees re-timed by real decoding (with the default tree and chain-4)
WALKED = 4  # the cost model's best trees scored again by replaying decoding, with each LOOKUP_TOKENS
LOOKUP_TOKENS = (0, 4, 8)  # n-gram lookup lengths of the replays (<= MAX_TUNE_DEPTH; 0 = the tree alone)
MEASURE_ROUNDS = 2  # interleaved rounds of real decoding; the median of the rounds is reported

# One prompt per kind of request chat users send (writing, role play, reasoning, math, code, extraction,
# science, humanities), written for calibration; none is taken from a benchmark.
CALIBRATION_CHAT = [
    "Write a short, friendly note inviting my neighbours to a garden party next Saturday.",
    "Pretend you are a museum guide and welcome a group of school children to the dinosaur hall.",
    "If all cats in a house are black and Tom is a cat in that house, what colour is Tom? Explain why.",
    "A shop sells pens at 3 dollars each. How much do 7 pens cost? Show the steps.",
    "Write a Python function that returns the n-th Fibonacci number, with a short docstring.",
    "List the names and ages in this text: Anna is 31, her brother Ben is 27 and their aunt Clara is 58.",
    "Explain in a few sentences how a refrigerator keeps food cold.",
    "Why did the Roman Empire build roads across Europe? Give three reasons.",
]
CALIBRATION_TEXT = ["Once upon a time, there was a little dog named", "The old man walked to the river and",
                    "Lily wanted to bake a cake for her mom, so she", "One sunny morning, Tom found a box",
                    "The sky was dark and the wind was loud.", "Ben and Mia went to the park to play.",
                    "There was a big tree in the garden.", "A little bird could not fly, so it"]


@dataclass
class TuneResult:
    choice: dict
    predicted_tokens_per_s: float  # the choice's measured tokens/s on the calibration prompts
    predicted_tau: float  # likewise its measured tau
    vanilla_predicted_tokens_per_s: float  # vanilla decoding of the calibration prompts, timed alongside
    forward_ms: dict[int, float]
    rest_ms: float
    context_tokens: int  # the longest calibration sequence (prompt and continuation), the forwards' context
    states: int  # the cost model's sample of decoding states
    new_tokens: int = CALIBRATION_NEW_TOKENS  # answer length of the calibration decoding
    prompt_tokens: float = 0.0  # mean calibration prompt length, after `with_context`
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def predicted_speedup(self) -> float:
        return self.predicted_tokens_per_s / self.vanilla_predicted_tokens_per_s

    def tree_config(self) -> TreeConfig:
        return TreeConfig.merged(self.choice, {})

    def vanilla_note(self) -> str | None:
        """What to tell the user when no tree beat vanilla decoding on the calibration prompts."""
        if self.predicted_tokens_per_s >= self.vanilla_predicted_tokens_per_s:
            return None
        return ("note: vanilla decoding was faster than every tree on the calibration prompts; on this hardware "
                "this draft does not pay off")

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_trees(method: str, draft_vocab: int) -> list[TreeConfig]:
    trees = [TreeConfig(kind="chain", depth=d) for d in range(1, MAX_TUNE_DEPTH + 1)]
    trees += [TreeConfig(), TreeConfig(kind="static")]  # the reference defaults, for comparison
    for k in DYNAMIC_TOP_K:
        for depth in DYNAMIC_DEPTHS:
            for total in DYNAMIC_TOTALS:
                if total - 1 <= dynamic_capacity(min(k, draft_vocab), depth) and total > depth + 1:
                    trees.append(TreeConfig(kind="dynamic", top_k=k, depth=depth, total_tokens=total))
    return trees


def calibration_prompts(generator: SpeculativeGenerator, path=None) -> list:
    """The built-in prompts (chat ones for a chat model), or the first turns of CALIBRATION_PROMPTS questions
    spread evenly over a question file of any schema `bench` reads (e.g. held-out prompts of your own traffic, or
    another prompt set of the benchmark's kind), as token ids."""
    if path is None:
        chat = getattr(generator.tokenizer, "chat_template", None) is not None
        return [[{"role": "user", "content": p}] for p in CALIBRATION_CHAT] if chat else list(CALIBRATION_TEXT)
    from eaglespec.data.fim import detect_fim_tokens
    from eaglespec.evaluation.questions import prompt_ids, read_questions

    questions = read_questions(path)
    questions = questions[::max(1, len(questions) // CALIBRATION_PROMPTS)][:CALIBRATION_PROMPTS]
    fim = detect_fim_tokens(generator.tokenizer) if any(q.kind == "fim" for q in questions) else None
    return [prompt_ids(q, 0, [], generator.tokenizer, fim) for q in questions]


def with_context(generator: SpeculativeGenerator, prompts: list, prompt_tokens: int | None) -> list[list[int]]:
    """The prompts as token ids, each one shorter than `prompt_tokens` preceded by the others (whole prompts,
    the next one nearest it, the farthest cut from the left) up to that length: the decoding context of a workload
    whose prompts are that long, built only from calibration text (a single prompt is left as it is)."""
    ids = [generator.encode(p)[0].tolist() for p in prompts]
    if not prompt_tokens:
        return ids
    out = []
    for i, prompt in enumerate(ids):
        context: list[int] = []
        others = itertools.cycle(ids[i + 1:] + ids[:i])  # again from the start if they are too few
        while len(ids) > 1 and len(context) + len(prompt) < prompt_tokens:
            context = next(others) + context
        out.append(context[max(0, len(context) + len(prompt) - prompt_tokens):] + prompt)
    return out


@dataclass
class State:
    drafter: Drafter  # caught up to position p (root = sequence[p])
    root: int
    continuation: torch.Tensor  # the target's greedy tokens after the root (longer than any candidate tree)
    lookup: list[int]  # the n-gram lookup's chain at this state (at most max(LOOKUP_TOKENS) tokens)


def greedy_sequences(generator: SpeculativeGenerator, prompts: list, new_tokens: int) -> list[tuple[int, list[int]]]:
    """(prompt length, prompt + the target's greedy continuation) per calibration prompt."""
    out = []
    for prompt in prompts:
        ids = generator.encode(prompt)[0].tolist()
        out.append((len(ids), ids + generator.vanilla_generate(ids, new_tokens).token_ids))
    return out


def decoding_states(generator: SpeculativeGenerator, sequences: list[tuple[int, list[int]]]) -> list[list[State]]:
    """Per greedy continuation, a state at each of its positions (room left for MAX_TUNE_DEPTH drafted tokens),
    each with a caught-up draft cache and the n-gram lookup's chain there."""
    walks = []
    for n, seq in sequences:
        out = generator.target(torch.tensor([seq], device=generator.target.device), aux_layer_ids=generator.aux_layer_ids)
        features = out.features(generator.draft.config.method)
        index, walk = NgramIndex(seq[:n]), []
        for p in range(n, len(seq) - MAX_TUNE_DEPTH - 1):
            drafter = Drafter(generator.draft, TreeConfig(kind="chain", depth=1))
            drafter.catch_up(torch.tensor([seq[1:p + 1]], device=features.device), features[:, :p])
            index.extend([seq[p]])
            continuation = torch.tensor(seq[p + 1:], device=features.device)
            walk.append(State(drafter, seq[p], continuation, index.continuation(max(LOOKUP_TOKENS))))
        walks.append(walk)
    return walks


def _propose(drafter: Drafter, state: State):
    drafter.cache, drafter.length, drafter.last_hidden = (state.drafter.cache, state.drafter.length,
                                                          state.drafter.last_hidden)
    return drafter.propose(state.root, max_depth=MAX_TUNE_DEPTH)


def evaluate_tree(generator: SpeculativeGenerator, tree: TreeConfig, states: list[State]) -> tuple[float, float, int]:
    """(mean accepted + 1, median propose ms, tree size) of `tree` (no lookup) over the sampled states."""
    drafter = Drafter(generator.draft, tree)
    accepted, times, size = [], [], 1
    for state in states:
        start = time.perf_counter()
        proposal = _propose(drafter, state)
        times.append(time.perf_counter() - start)
        accepted.append(accepted_length_on_path(proposal, state.continuation))
        size = proposal.size
    return 1 + statistics.fmean(accepted), 1e3 * statistics.median(times), size


def replay_tree(generator: SpeculativeGenerator, tree: TreeConfig, walks: list[list[State]]
                ) -> list[tuple[TreeConfig, float, float]]:
    """[(the tree with lookup n, tau, mean tree size per step) for n in LOOKUP_TOKENS]: greedy decoding of each
    continuation replayed from its states (each step jumps past the accepted tokens and the bonus token); the
    draft's proposal at a state is computed once for every lookup length."""
    drafter = Drafter(generator.draft, tree)
    proposals: dict[tuple[int, int], object] = {}
    out = []
    for n in LOOKUP_TOKENS:
        tokens = steps = size = 0
        for w, walk in enumerate(walks):
            i = 0
            while i < len(walk):
                if (w, i) not in proposals:
                    proposals[w, i] = _propose(drafter, walk[i])
                merged = proposals[w, i].with_chain(walk[i].lookup[:min(n, MAX_TUNE_DEPTH)])
                accepted = accepted_length_on_path(merged, walk[i].continuation)
                tokens, steps, size, i = tokens + accepted + 1, steps + 1, size + merged.size, i + accepted + 1
        out.append((dataclasses.replace(tree, lookup=n), tokens / max(1, steps), size / max(1, steps)))
    return out


def _decode_all(generator: SpeculativeGenerator, tree: TreeConfig | None, prompts: list,
                new_tokens: int) -> tuple[float, float]:
    """(tokens/s, tau) of decoding every prompt with `tree` (None: vanilla), as bench counts them."""
    gen = generator if tree is None else generator.with_tree(tree)
    tokens = forwards = 0
    seconds = 0.0
    for prompt in prompts:
        start = time.perf_counter()
        decode = gen.vanilla_generate if tree is None else gen.generate
        out = decode(prompt, new_tokens)
        seconds += time.perf_counter() - start
        tokens, forwards = tokens + out.stats.new_tokens, forwards + out.stats.target_forwards
    return tokens / seconds, tokens / max(1, forwards)


def measure_trees(generator: SpeculativeGenerator, trees: list[TreeConfig], prompts: list, new_tokens: int,
                  rounds: int = MEASURE_ROUNDS) -> tuple[list[tuple[float, float]], float]:
    """Real decoding of the prompts with each tree and with vanilla, in interleaved rounds (forward, then
    reversed order) -> ([(median tokens/s, tau)] per tree, vanilla's median tokens/s)."""
    runs: list[TreeConfig | None] = [None, *trees]
    speeds: list[list[float]] = [[] for _ in runs]
    taus = [0.0] * len(runs)
    for r in range(rounds):
        for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
            speed, taus[i] = _decode_all(generator, runs[i], prompts, new_tokens)
            speeds[i].append(speed)
    medians = [statistics.median(s) for s in speeds]
    return list(zip(medians[1:], taus[1:])), medians[0]


def rank_candidates(generator: SpeculativeGenerator, walks: list[list[State]], stride: int,
                    forward_ms: dict[int, float], prompt, new_tokens: int
                    ) -> tuple[list[tuple[TreeConfig, Candidate]], float, int]:
    """Every candidate tree with its cost-model prediction, best first; the per-step rest (ms); the number of
    sampled states. The WALKED best are replayed, with and without lookup, and ranked by the replays."""
    method = generator.draft.config.method
    sample = [state for walk in walks for state in walk[::stride]]
    evaluated = {tree: evaluate_tree(generator, tree, sample)
                 for tree in candidate_trees(method, generator.draft.config.draft_vocab_size)}
    chain4 = TreeConfig(kind="chain", depth=4)
    rest = step_rest_ms(generator, prompt, chain4, evaluated[chain4][1], forward_ms, evaluated[chain4][2], new_tokens)

    def candidate(tree: TreeConfig, tau: float, propose_ms: float, size: float) -> Candidate:
        fwd = interpolate(forward_ms, size)
        return Candidate(tree.summary(method), round(size, 1), tau, propose_ms, fwd,
                         1e3 * tau / (propose_ms + fwd + rest))

    ranked = {tree: candidate(tree, *figures) for tree, figures in evaluated.items()}
    for tree in sorted(ranked, key=lambda t: -ranked[t].predicted_tokens_per_s)[:WALKED]:
        for variant, tau, size in replay_tree(generator, tree, walks):
            ranked[variant] = candidate(variant, tau, evaluated[tree][1], size)
    order = sorted(ranked.items(), key=lambda e: -e[1].predicted_tokens_per_s)
    return order, rest, len(sample)


def finalists(ranked: list[tuple[TreeConfig, Candidate]], references: list[TreeConfig]
              ) -> list[tuple[TreeConfig, Candidate]]:
    """The model's FINALISTS best trees, its best tree without lookup and the `references` (EAGLE: the default
    tree and the depth-4 chain; DFlash: the whole block), once each."""
    best_plain = next(tree for tree, _ in ranked if not tree.lookup)
    wanted = [tree for tree, _ in ranked[:FINALISTS]] + [best_plain, *references]
    return [(tree, candidate) for tree, candidate in ranked if tree in wanted]


def tune_tree(generator: SpeculativeGenerator, prompts: list | None = None, log=print,
              new_tokens: int | None = None, prompt_tokens: int | None = None) -> TuneResult:
    """Measure and pick the fastest tree for this target, draft and hardware (see the module docstring);
    `new_tokens`: the answer length to tune for (default CALIBRATION_NEW_TOKENS); `prompt_tokens`: the
    workload's mean prompt length, which shorter calibration prompts are brought to (default: as they are).
    Time later decoding in another process: the one that tuned decodes slower afterwards (see
    `benchmark.tune_for_workload`, which tunes in a child process for that reason)."""
    if generator.draft is None:
        raise ValueError("tune needs a draft (it chooses how the draft proposes)")
    new_tokens = new_tokens or CALIBRATION_NEW_TOKENS
    if prompt_tokens and prompt_tokens + new_tokens > generator.context_length:
        raise ValueError(f"prompt_tokens {prompt_tokens} + new_tokens {new_tokens} exceed the model's context of "
                         f"{generator.context_length} tokens, so the calibration answers would be cut short")
    prompts = with_context(generator, prompts or calibration_prompts(generator), prompt_tokens)
    sequences = greedy_sequences(generator, prompts, new_tokens)
    forward_ms = time_forwards(generator, max(sequences, key=lambda s: len(s[1]))[1])
    log("target forward ms by tokens: " + ", ".join(f"{t}: {ms:.1f}" for t, ms in forward_ms.items()))
    if generator.draft.config.is_dflash:  # the block's chain length (see tune_block)
        ranked, rest, sampled = rank_blocks(generator, sequences, forward_ms, prompts[0], new_tokens, LOOKUP_TOKENS)
        references = [TreeConfig(kind="chain", depth=generator.draft.block_size - 1)]
    else:
        stride = max(STATE_STRIDE, STATE_STRIDE * new_tokens // CALIBRATION_NEW_TOKENS)  # as many states at any length
        walks = decoding_states(generator, sequences)
        ranked, rest, sampled = rank_candidates(generator, walks, stride, forward_ms, prompts[0], new_tokens)
        references = [TreeConfig(), TreeConfig(kind="chain", depth=4)]
    final = finalists(ranked, references)
    log(f"timing {len(final)} trees by real decoding of {len(prompts)} calibration prompts ({new_tokens} new tokens)")
    measured, vanilla = measure_trees(generator, [tree for tree, _ in final], prompts, new_tokens)
    for (_, candidate), (speed, tau) in zip(final, measured):
        candidate.measured_tokens_per_s, candidate.measured_tau = speed, tau
    best = max((c for _, c in final), key=lambda c: c.measured_tokens_per_s)
    candidates = sorted((c for _, c in ranked), key=lambda c: (c.measured_tokens_per_s is None,
                                                              -(c.measured_tokens_per_s or c.predicted_tokens_per_s)))
    context = max(len(seq) for _, seq in sequences)
    return TuneResult(best.tree, best.measured_tokens_per_s, best.measured_tau, vanilla, forward_ms, rest, context,
                      sampled, new_tokens, statistics.fmean(len(p) for p in prompts), candidates)


def write_tuned_tree(draft_dir, result: TuneResult, generator: SpeculativeGenerator):
    """Store the choice under `decoding` in the draft's config.json (atomically; the weights are untouched)."""
    import json
    from pathlib import Path

    from eaglespec._io import atomic_write_text
    from eaglespec.evaluation.report import machine_info

    path = Path(draft_dir) / "config.json"
    config = json.loads(path.read_text())
    config["decoding"] = {
        "tree": result.choice, "predicted_tokens_per_s": round(result.predicted_tokens_per_s, 2),
        "predicted_tau": round(result.predicted_tau, 3),
        "vanilla_predicted_tokens_per_s": round(result.vanilla_predicted_tokens_per_s, 2),
        "new_tokens": result.new_tokens,
        "tuned_on": machine_info(generator.target.device, generator.target.dtype),
    }
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return path
