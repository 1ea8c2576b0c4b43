"""Choose the draft tree for this hardware by measurement (`--tree auto`, `eaglespec tune`).

1. Cost model, measured here: the target's forward over T tokens (T in FORWARD_TOKEN_COUNTS) on top of a cached
   calibration prompt, the draft's `propose` for every candidate tree, and the per-step rest (catch-up,
   acceptance, cache surgery, stopping) from one real speculative run.
2. Acceptance, measured on calibration prompts (never the benchmark's): the target's greedy continuation of each
   prompt gives decoding states; at each state every candidate tree is drafted by the decoder's own `Drafter`
   and the accepted length is what greedy verification would accept (the path matching the continuation).
3. predicted tokens/s = (accepted + 1) / (propose + forward(tree size) + rest); the best candidate wins.
Sampling runs accept less than greedy; the choice is made on greedy acceptance.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding.cache import new_cache, truncate
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.tree import dynamic_capacity
from eaglespec.decoding.verify import accepted_length_on_path

FORWARD_TOKEN_COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
FORWARD_REPEATS = 5
CALIBRATION_NEW_TOKENS = 64
STATE_STRIDE = 3  # decoding states every few tokens of each calibration continuation
MAX_TUNE_DEPTH = 8
DYNAMIC_TOP_K = (2, 4, 8)
DYNAMIC_DEPTHS = (3, 4, 5, 6, 7)
DYNAMIC_TOTALS = (8, 12, 16, 24, 32, 48, 64)

CALIBRATION_CHAT = [
    "Explain in a few sentences how a refrigerator keeps food cold.",
    "Write a Python function that returns the n-th Fibonacci number, with a short docstring.",
    "Give me three tips for writing a clear email to a colleague.",
    "What is the difference between weather and climate?",
]
CALIBRATION_TEXT = ["Once upon a time, there was a little dog named", "The old man walked to the river and",
                    "Lily wanted to bake a cake for her mom, so she", "One sunny morning, Tom found a box"]


@dataclass
class Candidate:
    tree: dict  # TreeConfig fields
    size: int  # tokens verified per step (root included)
    predicted_tau: float
    propose_ms: float
    forward_ms: float
    predicted_tokens_per_s: float


@dataclass
class TuneResult:
    choice: dict
    predicted_tokens_per_s: float
    predicted_tau: float
    vanilla_predicted_tokens_per_s: float
    forward_ms: dict[int, float]
    rest_ms: float
    context_tokens: int
    states: int
    candidates: list[Candidate] = field(default_factory=list)

    def tree_config(self) -> TreeConfig:
        return TreeConfig.merged(self.choice, {})

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


def calibration_prompts(generator: SpeculativeGenerator) -> list:
    chat = getattr(generator.tokenizer, "chat_template", None) is not None
    return [[{"role": "user", "content": p}] for p in CALIBRATION_CHAT] if chat else list(CALIBRATION_TEXT)


@dataclass
class State:
    drafter: Drafter  # caught up to position p (root = sequence[p])
    root: int
    continuation: torch.Tensor  # the target's greedy tokens after the root (longer than any candidate tree)


def decoding_states(generator: SpeculativeGenerator, prompts: list) -> list[State]:
    """States along the target's greedy continuation of each prompt, each with a caught-up draft cache."""
    states = []
    for prompt in prompts:
        ids = generator._encode(prompt)[0].tolist()
        seq = ids + generator.vanilla_generate(ids, CALIBRATION_NEW_TOKENS).token_ids
        out = generator.target(torch.tensor([seq], device=generator.target.device), aux_layer_ids=generator.aux_layer_ids)
        features = out.features(generator.draft.config.method)
        for p in range(len(ids), len(seq) - MAX_TUNE_DEPTH - 1, STATE_STRIDE):
            drafter = Drafter(generator.draft, TreeConfig(kind="chain", depth=1))
            drafter.catch_up(torch.tensor([seq[1:p + 1]], device=features.device), features[:, :p])
            states.append(State(drafter, seq[p], torch.tensor(seq[p + 1:])))
    return states


def evaluate_tree(generator: SpeculativeGenerator, tree: TreeConfig, states: list[State]) -> tuple[float, float, int]:
    """(mean accepted + 1, median propose ms, tree size) of `tree` over the states."""
    drafter = Drafter(generator.draft, tree)
    accepted, times, size = [], [], 1
    for state in states:
        drafter.cache, drafter.length, drafter.last_hidden = (state.drafter.cache, state.drafter.length,
                                                              state.drafter.last_hidden)
        start = time.perf_counter()
        proposal = drafter.propose(state.root, max_depth=MAX_TUNE_DEPTH)
        times.append(time.perf_counter() - start)
        accepted.append(accepted_length_on_path(proposal, state.continuation))
        size = proposal.size
    return 1 + statistics.fmean(accepted), 1e3 * statistics.median(times), size


@torch.no_grad()
def time_forwards(generator: SpeculativeGenerator, prompt, counts=FORWARD_TOKEN_COUNTS) -> tuple[dict[int, float], int]:
    """Median ms of one target forward over T new tokens (chain mask) on top of the cached prompt."""
    target, device = generator.target, generator.target.device
    ids = generator._encode(prompt)
    cache, n = new_cache(), ids.shape[1]
    target(ids, cache=cache)
    out = {}
    for T in counts:
        tokens = ids[:, -1:].expand(1, T).contiguous()
        mask = torch.cat([torch.ones(T, n, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], 1).to(device)
        times = []
        for _ in range(FORWARD_REPEATS):
            start = time.perf_counter()
            target(tokens, position_ids=torch.arange(n, n + T, device=device)[None], attention_mask=mask[None, None],
                   cache=cache, aux_layer_ids=generator.aux_layer_ids)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            truncate(cache, n)
        out[T] = 1e3 * statistics.median(times)
    return out, n


def interpolate(table: dict[int, float], T: int) -> float:
    keys = sorted(table)
    if T in table:
        return table[T]
    lo = max([k for k in keys if k < T], default=keys[0])
    hi = min([k for k in keys if k > T], default=keys[-1])
    if hi == lo:
        return table[lo] * T / lo
    return table[lo] + (table[hi] - table[lo]) * (T - lo) / (hi - lo)


def step_rest_ms(generator: SpeculativeGenerator, prompt, tree: TreeConfig, propose_ms: float,
                 forward_ms: dict[int, float], size: int) -> float:
    """Per-step time that is neither propose nor the target forward, from one real speculative run."""
    gen = generator.with_tree(tree)
    start = time.perf_counter()
    out = gen.generate(prompt, CALIBRATION_NEW_TOKENS)
    wall = time.perf_counter() - start
    steps = max(1, out.stats.target_forwards - 1)
    prefill_ms = forward_ms[max(FORWARD_TOKEN_COUNTS)]  # an upper bound of the prompt's forward, small beside the steps
    return max(0.0, (1e3 * wall - prefill_ms) / steps - propose_ms - interpolate(forward_ms, size))


def vanilla_rest_ms(generator: SpeculativeGenerator, prompt, forward_ms: dict[int, float]) -> float:
    start = time.perf_counter()
    out = generator.vanilla_generate(prompt, CALIBRATION_NEW_TOKENS)
    per_token = 1e3 * (time.perf_counter() - start) / max(1, out.stats.new_tokens)
    return max(0.0, per_token - forward_ms[1])


def tune_tree(generator: SpeculativeGenerator, prompts: list | None = None, log=print) -> TuneResult:
    """Measure and pick the tree with the highest predicted tokens/s for this target, draft and hardware."""
    prompts = prompts or calibration_prompts(generator)
    method = generator.draft.config.method
    forward_ms, context = time_forwards(generator, prompts[0])
    log("target forward ms by tokens: " + ", ".join(f"{t}: {ms:.1f}" for t, ms in forward_ms.items()))
    states = decoding_states(generator, prompts)
    evaluated = []
    for tree in candidate_trees(method, generator.draft.config.draft_vocab_size):
        tau, propose_ms, size = evaluate_tree(generator, tree, states)
        evaluated.append((tree, tau, propose_ms, size))
    ref_tree, _, ref_propose, ref_size = next(e for e in evaluated if e[0] == TreeConfig(kind="chain", depth=4))
    rest = step_rest_ms(generator, prompts[0], ref_tree, ref_propose, forward_ms, ref_size)
    candidates = []
    for tree, tau, propose_ms, size in evaluated:
        fwd = interpolate(forward_ms, size)
        candidates.append(Candidate(tree.summary(method), size, tau, propose_ms, fwd, 1e3 * tau / (propose_ms + fwd + rest)))
    candidates.sort(key=lambda c: -c.predicted_tokens_per_s)
    best = candidates[0]
    vanilla = 1e3 / (forward_ms[1] + vanilla_rest_ms(generator, prompts[0], forward_ms))
    return TuneResult(best.tree, best.predicted_tokens_per_s, best.predicted_tau, vanilla, forward_ms, rest, context,
                      len(states), candidates)



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
        "tuned_on": machine_info(generator.target.device, generator.target.dtype),
    }
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return path
