"""Choose a DFlash draft's chain length for this hardware by measurement (`tune` / `--tree auto` with a DFlash draft).

A DFlash step drafts its whole block in one forward, so the candidates are few: the first d of the block's
block_size - 1 slots (d = 1 .. block_size - 1), each with and without n-gram lookup (`tune.LOOKUP_TOKENS`).
Longer chains verify more tokens per step (the target's forward grows with them) and, on a CPU, the draft's
lm_head grows with d too; where acceptance decays along the block, a shorter chain is faster.

1. Acceptance: the target's greedy continuation of each calibration prompt is walked once with the decoder's own
   `BlockDrafter` (its context caught up position by position), giving the whole block's chain at every position.
   Greedy decoding is then replayed for every candidate (from the first position, each step jumping past the
   accepted tokens and the bonus token): tau = tokens / steps, exactly what the decoder would accept on that
   continuation. One block per position serves every d, since slot k's token does not depend on d.
2. Cost: the block's propose time for each d (timed at a sample of the positions), the target's forward of the
   mean verified size (`tune_cost.time_forwards`), and the per-step rest of one real run of the whole block.
3. `tune.tune_tree` times the model's best candidates, its best without lookup and the whole block by real
   decoding, interleaved with vanilla, and keeps the fastest, as for EAGLE trees. The choice is stored as a chain
   (`{"kind": "chain", "depth": d, "lookup": n}`), which the DFlash drafters read as the block's chain length.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding.block_drafter import BlockDrafter
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.tree import DraftTree
from eaglespec.decoding.verify import accepted_length_on_path
from eaglespec.evaluation.tune_cost import Candidate, interpolate, step_rest_ms

PROPOSE_SAMPLES = 24  # positions at which each chain length's propose is timed


@dataclass
class BlockState:
    root: int  # the token at the state's position
    chain: list[int]  # the whole block's chain there (block_size - 1 tokens)
    lookup: list[int]  # the n-gram lookup's chain there
    continuation: torch.Tensor  # the target's greedy tokens after the root


def block_candidates(block_size: int, lookups: tuple[int, ...]) -> list[TreeConfig]:
    return [TreeConfig(kind="chain", depth=d, lookup=n) for d in range(1, block_size) for n in lookups]


@torch.no_grad()
def sequence_features(generator: SpeculativeGenerator, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [1, T], the draft's target features [1, T, F]) of one calibration sequence, from one target forward."""
    ids = torch.tensor([seq], device=generator.target.device)
    out = generator.target(ids, aux_layer_ids=generator.aux_layer_ids)
    return ids, out.features(generator.draft.config.method)


@torch.no_grad()
def block_walks(generator: SpeculativeGenerator, sequences: list[tuple[int, list[int]]],
                features: list[tuple[torch.Tensor, torch.Tensor]], lookup_tokens: int) -> list[list[BlockState]]:
    """Per (prompt length, prompt + greedy continuation) and its `sequence_features`: a state at every position
    past the prompt with room for a whole block after it, holding the block's chain drafted there and the n-gram
    lookup's chain."""
    draft, walks = generator.draft, []
    room = draft.block_size
    for (n, seq), (ids, features) in zip(sequences, features):
        drafter, index, walk = BlockDrafter(draft), NgramIndex(seq[:n]), []
        drafter.catch_up(ids[:, 1:n + 1], features[:, :n])
        for p in range(n, len(seq) - room):
            index.extend([seq[p]])
            chain = drafter.propose(seq[p], max_depth=room).tokens[1:].tolist()
            walk.append(BlockState(seq[p], chain, index.continuation(lookup_tokens), ids[0, p + 1:]))
            drafter.catch_up(ids[:, p + 1:p + 2], features[:, p:p + 1])
        walks.append(walk)
    return walks


def replay(tree: TreeConfig, walks: list[list[BlockState]], device: torch.device) -> tuple[float, float]:
    """(tau, mean verified tokens per step) of greedy decoding replayed along the walks with `tree`'s chain
    length and lookup."""
    tokens = steps = size = 0
    for walk in walks:
        i = 0
        while i < len(walk):
            state = walk[i]
            proposal = DraftTree.root_only(state.root, device).with_chain(state.chain[:tree.depth])
            proposal = proposal.with_chain(state.lookup[:tree.lookup])
            accepted = accepted_length_on_path(proposal, state.continuation)
            tokens, steps, size, i = tokens + accepted + 1, steps + 1, size + proposal.size, i + accepted + 1
    return tokens / max(1, steps), size / max(1, steps)


@torch.no_grad()
def propose_ms(generator: SpeculativeGenerator, sequence: tuple[int, list[int]],
               features: tuple[torch.Tensor, torch.Tensor]) -> dict[int, float]:
    """Median ms of a block proposal keeping d slots, for every d, at PROPOSE_SAMPLES positions of a calibration
    sequence (its context cached, as decoding has it); `features`: its `sequence_features`."""
    draft = generator.draft
    (n, seq), (ids, features) = sequence, features
    positions = range(n, len(seq) - 1, max(1, (len(seq) - 1 - n) // PROPOSE_SAMPLES))
    times: dict[int, list[float]] = {d: [] for d in range(1, draft.block_size)}
    for p in positions:
        drafter = BlockDrafter(draft)
        drafter.catch_up(ids[:, 1:p + 1], features[:, :p])
        drafter.propose(seq[p], max_depth=1)  # the context goes into the cache: each timed call below is one step
        for d in times:
            start = time.perf_counter()
            drafter.propose(seq[p], max_depth=d)
            times[d].append(time.perf_counter() - start)
    return {d: 1e3 * statistics.median(ts) for d, ts in times.items()}


def rank_blocks(generator: SpeculativeGenerator, sequences: list[tuple[int, list[int]]], forward_ms: dict[int, float],
                prompt, new_tokens: int, lookups: tuple[int, ...]) -> tuple[list[tuple[TreeConfig, Candidate]], float, int]:
    """Every chain length and lookup with its cost-model prediction, best first; the per-step rest (ms); the
    number of decoding states walked."""
    block_size = generator.draft.block_size
    features = [sequence_features(generator, seq) for _, seq in sequences]
    walks = block_walks(generator, sequences, features, max(lookups))
    propose = propose_ms(generator, sequences[0], features[0])
    whole = TreeConfig(kind="chain", depth=block_size - 1)
    rest = step_rest_ms(generator, prompt, whole, propose[block_size - 1], forward_ms, block_size, new_tokens)
    ranked = []
    for tree in block_candidates(block_size, lookups):
        tau, size = replay(tree, walks, generator.target.device)
        fwd = interpolate(forward_ms, size)
        ms = propose[tree.depth] + fwd + rest
        ranked.append((tree, Candidate(tree.summary(generator.draft.config.method), round(size, 1), tau,
                                       propose[tree.depth], fwd, 1e3 * tau / ms)))
    ranked.sort(key=lambda e: -e[1].predicted_tokens_per_s)
    return ranked, rest, sum(len(w) for w in walks)
