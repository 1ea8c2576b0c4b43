"""Batched exact tree speculative decoding (batch size > 1) and a running batch for continuous batching.

One step of a `RunningBatch` over its B running sequences reads like the batch-size-1 step:
    trees = drafter.propose(roots, lengths)          # draft: one draft forward per tree depth for ALL rows
    logits = target(padded trees, one 4D mask)        # verify: ONE target forward over every row's tree
    results = [verify(tree_b, logits_b) for b]       # accept: per row, greedy or lossless sampling, own RNG
    keep_row_positions(target cache, paths)          # update caches: each row keeps exactly its accepted path
    drafter.catch_up(accepted tokens, features)      # one draft forward appends every row's accepted tokens
Requests join between steps (each is prefilled alone, then its caches become a new batch row) and leave as
soon as they finish (EOS, stop string, max_new_tokens, full context), without stopping the others.

Layout: padded caches with per-row lengths and right-hand holes (`_batch_cache.py`). Row b's cache slots
[0, L_b) hold exactly its accepted sequence at positions 0..L_b-1; slots [L_b, S) (S = max_b L_b) are holes
that every mask excludes. The verification forward appends T = max_b T_b slots to every row: row b's tree
nodes take position ids L_b + depth, its queries see its own prefix and tree ancestors; padding queries (rows
with smaller trees) see their prefix and themselves, so no query row is ever fully masked (no NaN in sdpa
or eager softmax, bool or additive masks alike) and their outputs are discarded. Positions are per row, so
rotary embeddings are exactly those of the row decoded alone; greedy outputs are therefore the batch-size-1
ones up to fp32 rounding of batched matmuls (the tests count ties as at batch size 1). After verification
the accepted slots are moved into place with one indexed copy per layer and the slot axis is cropped.

Memory: target cache = B * S * (2 * layers * kv_heads * head_dim * bytes per element), i.e. the holes cost
sum_b (S - L_b) slots -- the length spread of the batch (a long row keeps S high until it leaves; rows that
leave shrink S to the longest remaining row). A step transiently adds B * T slots (the trees) and, as at batch
size 1, DynamicCache copies the cache once per forward when it concatenates. The draft cache has the same
layout with one layer. The alternative, left padding (every row ending at slot S), would shift a row's whole
cache whenever the rows accept different numbers of tokens; a paged layout would need an attention kernel
that transformers' sdpa/eager paths do not have. Sliding-window models decode exactly up to
their window per row (`context_length`), as at batch size 1, because the masks are full-causal per row.

One exception: RoPE variants whose frequencies depend on the sequence length ("dynamic" NTK, "longrope" as in
Phi-3-128k) pick them in transformers from the largest position id of the whole forward, so once one row
passes the switch point (original_max_position_embeddings) the shorter rows get other frequencies than alone
(transformers' own batched `generate` behaves the same). `RunningBatch` warns about such models.

Prefill runs per request (batch size 1) when it joins: the same numerics as batch size 1, and a joining
request does not need a padded prefill over the running rows.

API (a `DecodingSession`'s batches; `SpeculativeGenerator` has them as methods, as here):
    result = gen.generate_batch(prompts, max_new_tokens, max_batch_size=8, temperature=.., seed=..)
    result.outputs[i]        # GenerationOutput of prompts[i] (stats per sequence; error set if it failed)
    result.timings[i]        # RequestTiming: queued, time_to_first_token, latency (seconds)
    result.wall_time, result.tokens_per_second, result.batch_forwards
    gen.stream_batch(prompts, ...)            # the same as StepEvents (request_id = prompt index)
    batch = gen.running_batch(max_batch_size=8)   # continuous batching (the server)
    request_id = batch.add(prompt, options=GenerationOptions(...))  # (or its fields) ValueError on bad input
    for event in batch.step(): ...            # StepEvent(request_id, chunk, output/timing on the last one)
    batch.cancel(request_id)
vanilla=True gives the batched vanilla baseline (a root-only tree per row) through the same API.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import append_row, keep_row_positions, prefix_mask, select_rows
from eaglespec.decoding._batch_block_draft import BatchBlockDrafter
from eaglespec.decoding._batch_draft import BatchDrafter
from eaglespec.decoding.cache import new_cache
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.options import GenerationOptions, generation_options
from eaglespec.decoding.outputs import GenerationOutput, GenerationStats, StreamChunk
from eaglespec.decoding.request import Prompt, Request
from eaglespec.decoding.session import DecodingSession
from eaglespec.decoding.stopping import StreamProgress
from eaglespec.decoding.timing import timed
from eaglespec.decoding.tree import DraftTree
from eaglespec.decoding.verify import VerifyResult, verify
from eaglespec.models.target import TargetOutput

logger = logging.getLogger(__name__)

LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")  # RoPE types that choose frequencies from the longest position


def length_dependent_rope(config) -> bool:
    """Whether the target's RoPE frequencies depend on the sequence length (so on the longest row of a batch)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    per_layer_type = [v for v in rope.values() if isinstance(v, dict)]
    return any(r.get("rope_type", r.get("type")) in LENGTH_DEPENDENT_ROPE for r in [rope, *per_layer_type])


@dataclass
class RequestTiming:
    """Wall-clock seconds of one request, measured from `RunningBatch.add`."""

    queued: float  # until it was admitted (prefill start)
    time_to_first_token: float
    latency: float  # until its last token


@dataclass
class StepEvent:
    """What one request got from one `RunningBatch.step`. `output` and `timing` are set on its last event."""

    request_id: int
    chunk: StreamChunk
    output: GenerationOutput | None = None
    timing: RequestTiming | None = None

    @property
    def finished(self) -> bool:
        return self.output is not None


@dataclass
class BatchResult:
    """`generate_batch`'s result: per-prompt outputs (same order as the prompts) and batch-level figures."""

    outputs: list[GenerationOutput]
    timings: list[RequestTiming | None]  # None for a prompt that failed before decoding (output.error)
    wall_time: float  # seconds for the whole batch
    batch_forwards: int  # target forwards run: one per prefill plus one per batched step

    @property
    def new_tokens(self) -> int:
        return sum(o.stats.new_tokens for o in self.outputs)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0


@dataclass
class _Row:
    request_id: int
    request: Request
    progress: StreamProgress
    added: float  # perf_counter() at add()
    stats: GenerationStats = field(default_factory=GenerationStats)
    length: int = 0  # tokens in the target cache; `root` sits at position `length`
    root: int = -1
    admitted: float = 0.0
    first_token: float = 0.0
    lookup: NgramIndex | None = None  # the row's tokens for the n-gram lookup (TreeConfig.lookup > 0)
    drafted: int = 0  # nodes of this step's tree the draft proposed (the lookup's own come after them)


class RunningBatch:
    """Continuous batching: `add` requests at any time, call `step` until it is empty.

    Each `step` runs one batched speculative (or vanilla) step for the running requests, then admits waiting
    requests while fewer than `max_batch_size` run (each admission is that request's prefill and first token).
    """

    def __init__(self, session: DecodingSession, vanilla: bool = False, max_batch_size: int | None = None):
        if not vanilla and not session.can_speculate:
            raise ValueError("speculative decoding needs a draft model or n-gram lookup (a tree with lookup > 0); "
                             "use vanilla=True without either")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (or None: no limit), got {max_batch_size}")
        if length_dependent_rope(session.target.config):
            logger.warning("this target's RoPE depends on the sequence length: in a batch, rows shorter than the "
                           "switch point may decode differently from alone once a longer row passes it")
        self.session = session
        self.vanilla = vanilla
        self.max_batch_size = max_batch_size
        self.drafter = None if vanilla or session.drafter is None else batch_drafter(session)
        self.aux_layer_ids = None if self.drafter is None else session.aux_layer_ids
        self.lookup = 0 if vanilla else session.tree.lookup
        self.cache: DynamicCache | None = None  # target cache, one row per running request
        self.rows: list[_Row] = []  # running requests in cache-row order
        self.waiting: deque[_Row] = deque()
        self.batch_forwards = 0
        self._next_id = 0

    def __len__(self) -> int:
        """Requests running or waiting."""
        return len(self.rows) + len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.rows)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def add(self, prompt: Prompt, max_new_tokens: int | None = None, *, options: GenerationOptions | None = None,
            **settings) -> int:
        """Queue a request (same arguments as `SpeculativeGenerator.stream`) -> its id. Bad input (an empty or
        too long prompt, bad sampling settings) raises ValueError here and leaves the batch as it was."""
        options = generation_options(options, max_new_tokens=max_new_tokens, **settings)
        request = self.session.request(prompt, options)
        row = _Row(self._next_id, request, StreamProgress(request.stop, self.session.decode), time.perf_counter())
        self._next_id += 1
        self.waiting.append(row)
        return row.request_id

    def cancel(self, request_id: int) -> bool:
        """Drop a waiting or running request (e.g. its client went away). False if it is not in the batch."""
        for row in self.waiting:
            if row.request_id == request_id:
                self.waiting.remove(row)
                return True
        index = next((i for i, r in enumerate(self.rows) if r.request_id == request_id), None)
        if index is None:
            return False
        self._drop({index}, draft_lengths=[r.length for r in self.rows])
        return True

    @torch.no_grad()
    def step(self) -> list[StepEvent]:
        """One batched step for the running requests, then admissions; at most one event per request."""
        events = self._decode_step() if self.rows else []
        while self.waiting and (self.max_batch_size is None or len(self.rows) < self.max_batch_size):
            events.append(self._admit(self.waiting.popleft()))
        return events

    # ------------------------------------------------------------------------------------------------
    def _admit(self, row: _Row) -> StepEvent:
        """Prefill the request alone, emit its first token, and add it as the last batch row if it continues."""
        device = self.session.device
        row.admitted = time.perf_counter()
        cache = new_cache()
        with timed(device, row.stats.add_verify_time):
            root, features = self.session.prefill(row.request, cache)
        self.batch_forwards += 1
        row.length, row.root = row.request.input_ids.shape[1], root
        event = self._emit(row, [root], [False])
        if self._finished(row):
            return self._finish(row, event)
        with timed(device, row.stats.add_draft_time, synchronize=False):  # the next proposal's timing waits
            self.cache = append_row(self.cache, cache)
            self.rows.append(row)
            if self.drafter is not None:
                next_ids = torch.cat([row.request.input_ids[:, 1:], torch.tensor([[root]], device=device)], 1)
                self.drafter.admit(next_ids, features)
            if self.lookup:
                row.lookup = NgramIndex(row.request.input_ids[0].tolist() + [root])
        return event

    def _decode_step(self) -> list[StepEvent]:
        """Draft -> verify (one target forward) -> accept per row -> update caches -> finished rows leave."""
        rows, device = self.rows, self.session.device
        lengths = [r.length for r in rows]
        with timed(device, self._charge(GenerationStats.add_draft_time, rows)):  # draft
            trees = self._propose(rows)
        slots = self.cache.get_seq_length()
        with timed(device, self._charge(GenerationStats.add_verify_time, rows)):
            out = self._verify_forward(trees, lengths)  # verify
            results = [verify(tree, out.logits[b, : tree.size], r.request.sampling, r.request.generator)
                       for b, (tree, r) in enumerate(zip(trees, rows))]  # accept, per row
        self.batch_forwards += 1
        keep_row_positions(self.cache, lengths, [res.path for res in results], base=slots)  # update caches
        events = [self._accept(row, tree, result) for row, tree, result in zip(rows, trees, results)]
        finished = {b for b, event in enumerate(events) if event.finished}
        with timed(device, self._charge(GenerationStats.add_draft_time)):  # charged to the rows that stay
            self._drop(finished, draft_lengths=lengths)
            if self.drafter is not None and self.rows:
                kept = [b for b in range(len(rows)) if b not in finished]
                self._draft_catch_up(out, kept, trees, results, lengths)
        return events

    def _charge(self, add: Callable[[GenerationStats, float], None], rows: list[_Row] | None = None
                ) -> Callable[[float], None]:
        """A `timed` record that adds the seconds to every row of `rows` (None: the rows running at the end)."""
        def record(seconds: float) -> None:
            for row in self.rows if rows is None else rows:
                add(row.stats, seconds)
        return record

    def _propose(self, rows: list[_Row]) -> list[DraftTree]:
        device = self.session.device
        depths = [self.session.context_length - r.length - 2 for r in rows]  # room for the bonus token
        if self.drafter is None:
            trees = [DraftTree.root_only(r.root, device) for r in rows]  # vanilla, or n-gram lookup alone
        else:
            trees = self.drafter.propose([r.root for r in rows], [r.length for r in rows], depths)
        for b, row in enumerate(rows):
            row.drafted = trees[b].size
            if row.lookup is not None:
                trees[b] = trees[b].with_chain(row.lookup.continuation(min(self.lookup, depths[b])))
        return trees

    def _verify_forward(self, trees: list[DraftTree], lengths: list[int]) -> TargetOutput:
        """One target forward over every row's tree, padded to the largest tree (see the module docstring)."""
        device = self.session.device
        B, T = len(trees), max(t.size for t in trees)
        slots = self.cache.get_seq_length()
        tokens = torch.zeros(B, T, dtype=torch.long, device=device)
        positions = torch.tensor(lengths, device=device)[:, None].repeat(1, T)
        tree_mask = torch.eye(T, dtype=torch.bool, device=device).repeat(B, 1, 1)  # padding: itself only
        for b, tree in enumerate(trees):
            tokens[b, : tree.size] = tree.tokens
            positions[b, : tree.size] += tree.depths
            tree_mask[b, : tree.size, : tree.size] = tree.mask
        prefix = prefix_mask(torch.tensor(lengths, device=device), slots)[:, None, :].expand(B, T, slots)
        mask = torch.cat([prefix, tree_mask], dim=2)[:, None]  # [B, 1, T, slots + T]
        return self.session.target(tokens, position_ids=positions, attention_mask=mask, cache=self.cache,
                                   aux_layer_ids=self.aux_layer_ids)

    def _draft_catch_up(self, out: TargetOutput, kept: list[int], trees: list[DraftTree],
                        results: list[VerifyResult], lengths: list[int]) -> None:
        """The draft cache follows each running row's accepted path: x_{t+1} and f_t for the path positions t.
        kept: the step's batch indices of the rows still running (in their new order); trees, results,
        lengths: per batch index of the step."""
        features = self.session.draft_features(out)  # [B_step, T, F]
        counts = [results[b].path.numel() for b in kept]
        ids = torch.zeros(len(kept), max(counts), dtype=torch.long, device=features.device)
        feats = features.new_zeros(len(kept), max(counts), features.shape[-1])
        for i, b in enumerate(kept):
            path, n = results[b].path, counts[i]
            ids[i, : n - 1] = trees[b].tokens[path[1:]]
            ids[i, n - 1] = results[b].bonus_token
            feats[i, :n] = features[b, path]
        self.drafter.catch_up(ids, feats, counts, [lengths[b] for b in kept])

    def _accept(self, row: _Row, tree: DraftTree, result: VerifyResult) -> StepEvent:
        if not self.vanilla:
            row.stats.record_step(result.accept_length, tree.depth, int((result.path >= row.drafted).sum()))
        accepted = tree.tokens[result.path[1:]].tolist()
        row.length += result.path.numel()
        row.root = result.bonus_token
        if row.lookup is not None:
            row.lookup.extend(accepted + [row.root])
        event = self._emit(row, accepted + [result.bonus_token], [True] * len(accepted) + [False])
        return self._finish(row, event) if self._finished(row) else event

    def _emit(self, row: _Row, tokens: list[int], from_draft: list[bool]) -> StepEvent:
        row.stats.target_forwards += 1
        kept, new_text = row.progress.add(tokens, from_draft)
        row.stats.new_tokens = len(row.progress.state.tokens)
        if not row.first_token:
            row.first_token = time.perf_counter()
        return StepEvent(row.request_id, StreamChunk(tokens[:kept], new_text, from_draft[:kept]))

    def _finished(self, row: _Row) -> bool:
        """A stopping rule fired, or the context has no room for the root and a bonus token."""
        return row.progress.state.finish_reason is not None or row.length + 2 > self.session.context_length

    def _finish(self, row: _Row, event: StepEvent) -> StepEvent:
        now = time.perf_counter()
        event.chunk.text += row.progress.flush() or ""
        stats = row.stats
        stats.finish_reason = row.progress.state.finish_reason or "length"  # no stop rule: the context is full
        stats.other_time = max(0.0, now - row.admitted - stats.draft_time - stats.verify_time)
        tokens = list(row.progress.state.tokens)
        event.output = GenerationOutput(tokens, self.session.decode(tokens), stats, row.progress.from_draft)
        event.timing = RequestTiming(row.admitted - row.added, row.first_token - row.added, now - row.added)
        return event

    def _drop(self, indices: set[int], draft_lengths: list[int]) -> None:
        """Remove the batch rows `indices` from both caches. draft_lengths: draft entries per current row."""
        if not indices:
            return
        keep = [b for b in range(len(self.rows)) if b not in indices]
        self.rows = [self.rows[b] for b in keep]
        if not keep:
            self.cache = None
            if self.drafter is not None:
                self.drafter.select_rows(torch.zeros(0, dtype=torch.long), 0)
            return
        rows = torch.tensor(keep, device=self.session.device)
        select_rows(self.cache, rows, max(r.length for r in self.rows))
        if self.drafter is not None:
            self.drafter.select_rows(rows, max(draft_lengths[b] for b in keep))


def batch_drafter(session: DecodingSession) -> BatchDrafter | BatchBlockDrafter:
    """The batched twin of the session's drafter: EAGLE's tree expansion, or DFlash's block."""
    if session.draft.config.is_dflash:
        return BatchBlockDrafter(session.draft, session.tree.depth)
    return BatchDrafter(session.drafter.expander)


# ----------------------------------------------------------------------------------------------------
def batch_options(options: GenerationOptions | None = None, /, seed: int | list[int | None] | None = None,
                  **settings) -> tuple[GenerationOptions, list[int | None] | None]:
    """A batch call's keywords -> (the options all prompts share, per-prompt seeds or None). seed: an int or
    None is the options' seed (prompt i then uses seed + i, see `_row_seeds`); a list gives one per prompt."""
    if isinstance(seed, (list, tuple)):
        return generation_options(options, **settings), list(seed)
    return generation_options(options, seed=seed, **settings), None


def _row_seeds(options: GenerationOptions, seeds: list[int | None] | None, count: int) -> list[int | None]:
    """Per-prompt seeds as given; else options.seed + i for prompt i (distinct, reproducible streams), or None
    (random) for every prompt."""
    if seeds is None:
        return [None if options.seed is None else options.seed + i for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"seed: got {len(seeds)} seeds for {count} prompts (give one per prompt, or an int)")
    return seeds


def _error_output(message: str) -> GenerationOutput:
    return GenerationOutput([], "", GenerationStats(finish_reason="error"), [], error=message)


def stream_batch(session: DecodingSession, prompts: Iterable[Prompt], options: GenerationOptions,
                 vanilla: bool = False, max_batch_size: int | None = None,
                 seeds: list[int | None] | None = None) -> Iterator[StepEvent]:
    """Decode all prompts in one running batch of at most `max_batch_size` rows (None: all at once); events
    carry request_id = the prompt's index. `options` are shared by all prompts, with per-prompt seeds (see
    `_row_seeds`). A prompt that cannot be decoded (too long for the context, a chat prompt without a chat
    template, ...) gets one event whose output has finish_reason "error" and the message in `error`; the
    others decode normally."""
    batch = RunningBatch(session, vanilla=vanilla, max_batch_size=max_batch_size)
    return _run(batch, list(prompts), options, seeds)


def _run(batch: RunningBatch, prompts: list[Prompt], options: GenerationOptions,
         seeds: list[int | None] | None) -> Iterator[StepEvent]:
    index_of = {}
    for i, (prompt, row_seed) in enumerate(zip(prompts, _row_seeds(options, seeds, len(prompts)))):
        try:
            index_of[batch.add(prompt, options=replace(options, seed=row_seed))] = i
        except ValueError as e:
            yield StepEvent(i, StreamChunk([], "", []), output=_error_output(f"prompt {i}: {e}"))
    while len(batch):
        for event in batch.step():
            event.request_id = index_of[event.request_id]
            yield event


def generate_batch(session: DecodingSession, prompts: Iterable[Prompt], options: GenerationOptions,
                   vanilla: bool = False, max_batch_size: int | None = None,
                   seeds: list[int | None] | None = None) -> BatchResult:
    """`stream_batch` collected: one GenerationOutput per prompt (same order), timings, total wall time."""
    prompts = list(prompts)
    outputs: list[GenerationOutput | None] = [None] * len(prompts)
    timings: list[RequestTiming | None] = [None] * len(prompts)
    started = time.perf_counter()
    batch = RunningBatch(session, vanilla=vanilla, max_batch_size=max_batch_size)
    for event in _run(batch, prompts, options, seeds):
        if event.finished:
            outputs[event.request_id], timings[event.request_id] = event.output, event.timing
    return BatchResult(outputs, timings, time.perf_counter() - started, batch.batch_forwards)
