"""`SpeculativeGenerator`: exact tree speculative decoding (and the vanilla baseline) for any HF causal LM.

One speculative step reads like the paper:
    tree = drafter.propose(root)                         # draft: EAGLE-2 dynamic / static / chain tree
    tree = tree.with_chain(lookup.continuation(n))       # (optional) n-gram lookup merged in (`lookup.py`)
    logits = target(tree tokens, tree mask, positions)  # verify: ONE target forward over the whole tree
    result = verify(tree, logits)                        # accept: greedy or lossless rejection sampling
    keep_positions(target cache, accepted path)          # update caches: keep exactly the accepted path
    drafter.catch_up(accepted tokens, target features)   # the draft cache follows the accepted prefix
Batch size 1; the timing of each phase is kept by `timing.timed` blocks around it. The generator's
`DecodingSession` (`session.py`) holds the models and builds requests; `batch.py` decodes several requests
through the same session (`generate_batch`, `stream_batch`, `running_batch`). Without a draft, n-gram lookup
alone (`TreeConfig.lookup`) proposes.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator

import torch

from eaglespec.decoding import batch
from eaglespec.decoding.cache import keep_positions, new_cache
from eaglespec.decoding.block_drafter import BlockDrafter
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.options import GenerationOptions, generation_options
from eaglespec.decoding.outputs import GenerationOutput, GenerationStats, StreamChunk
from eaglespec.decoding.request import Prompt, Request
from eaglespec.decoding.sampling import next_token
from eaglespec.decoding.session import DecodingSession
from eaglespec.decoding.stopping import StreamProgress
from eaglespec.decoding.timing import timed
from eaglespec.decoding.tree import DraftTree, TreeConfig
from eaglespec.decoding.verify import VerifyResult, verify
from eaglespec.models import DFlashDraftModel, EagleDraftModel, TargetModel, load_draft
from eaglespec.models.target import TargetOutput

Steps = Iterator[tuple[list[int], list[bool]]]  # per target forward: the tokens it gave, and which were drafted


class SpeculativeGenerator:
    """Speculative (and vanilla) generation with a target and an optional EAGLE draft. Batch size 1; batches
    through `generate_batch` / `stream_batch` / `running_batch`.

    Settings: a `GenerationOptions` (`options=`) and/or its fields as keywords (max_new_tokens, temperature,
    top_p, top_k, eos_token_id, stop, seed), turned into one `GenerationOptions` per call."""

    def __init__(self, target: TargetModel, draft: EagleDraftModel | DFlashDraftModel | None, tokenizer=None,
                 tree: TreeConfig | None = None):
        self.session = DecodingSession(target, draft, tokenizer, tree)
        # the session's parts, read by evaluation, serving and the commands
        self.target, self.draft, self.tokenizer = target, draft, tokenizer
        self.tree, self.drafter = self.session.tree, self.session.drafter
        self.aux_layer_ids, self.context_length = self.session.aux_layer_ids, self.session.context_length

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike, draft: str | os.PathLike | None,
                        dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                        **tree_kwargs) -> "SpeculativeGenerator":
        """base: HF model dir (or 'stories260K'); draft: an eaglespec draft dir, EAGLE or DFlash (None: vanilla only).
        tree_kwargs (TreeConfig fields) override the draft's tuned tree (`eaglespec tune`), if it has one."""
        from transformers import AutoTokenizer

        from eaglespec.models import resolve_model_path

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        base = resolve_model_path(base)
        target = TargetModel.from_pretrained(base, dtype=dtype, device=device)
        model = None
        if draft is not None:
            model = load_draft(resolve_model_path(draft), target=target, dtype=target.dtype, device=target.device)
        tokenizer = AutoTokenizer.from_pretrained(base)
        tuned = (model.config.decoding or {}).get("tree") if model is not None else None
        return cls(target, model, tokenizer, TreeConfig.merged(tuned, tree_kwargs))

    # ------------------------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, max_new_tokens: int | None = None, *, options: GenerationOptions | None = None,
                 **settings) -> GenerationOutput:
        """Speculative generation. settings: GenerationOptions fields (see stream)."""
        stats = GenerationStats()
        return self._collect(self.stream(prompt, max_new_tokens, options=options, stats=stats, **settings), stats)

    def vanilla_generate(self, prompt: Prompt, max_new_tokens: int | None = None, *,
                         options: GenerationOptions | None = None, **settings) -> GenerationOutput:
        """Plain target decoding with the KV cache, same interface and stats (the baseline)."""
        stats = GenerationStats()
        chunks = self.stream(prompt, max_new_tokens, options=options, vanilla=True, stats=stats, **settings)
        return self._collect(chunks, stats)

    def generate_batch(self, prompts: Iterable[Prompt], max_new_tokens: int | None = None, *, vanilla: bool = False,
                       max_batch_size: int | None = None, options: GenerationOptions | None = None,
                       **settings) -> batch.BatchResult:
        """Several prompts in one batched loop -> `BatchResult` (outputs in prompt order, wall time). settings:
        GenerationOptions fields shared by all prompts; seed may also be a list, one per prompt."""
        options, seeds = batch.batch_options(options, max_new_tokens=max_new_tokens, **settings)
        return batch.generate_batch(self.session, prompts, options, vanilla, max_batch_size, seeds)

    def stream_batch(self, prompts: Iterable[Prompt], max_new_tokens: int | None = None, *, vanilla: bool = False,
                     max_batch_size: int | None = None, options: GenerationOptions | None = None,
                     **settings) -> Iterator[batch.StepEvent]:
        """`generate_batch` as an iterator of `StepEvent`s (request_id = prompt index)."""
        options, seeds = batch.batch_options(options, max_new_tokens=max_new_tokens, **settings)
        return batch.stream_batch(self.session, prompts, options, vanilla, max_batch_size, seeds)

    def running_batch(self, vanilla: bool = False, max_batch_size: int | None = None) -> batch.RunningBatch:
        """A `RunningBatch` for continuous batching: add() requests, step() until empty."""
        return batch.RunningBatch(self.session, vanilla=vanilla, max_batch_size=max_batch_size)

    def stream(self, prompt: Prompt, max_new_tokens: int | None = None, *, options: GenerationOptions | None = None,
               vanilla: bool = False, stats: GenerationStats | None = None, **settings) -> Iterator[StreamChunk]:
        """Yield chunks of accepted tokens as each target forward accepts them. Pass `stats` to read the
        statistics (finish_reason included) once the iterator is exhausted."""
        options = generation_options(options, max_new_tokens=max_new_tokens, **settings)
        request = self.session.request(prompt, options)
        if not vanilla and not self.session.can_speculate:
            raise ValueError("speculative decoding needs a draft model or n-gram lookup (a tree with lookup > 0); "
                             "use vanilla_generate() without either")
        stats = stats if stats is not None else GenerationStats()
        steps = self._vanilla_steps(request, stats) if vanilla else self._speculative_steps(request, stats)
        yield from self._apply_stopping(steps, request, stats)

    # ------------------------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> torch.Tensor:
        """ids tensor / list of ids / text / chat messages -> input ids [1, n] on the target device."""
        return self.session.encode(prompt)

    def decode(self, tokens: list[int]) -> str:
        """Token ids -> text without special tokens ("" without a tokenizer)."""
        return self.session.decode(tokens)

    def eos_token_ids(self, eos_token_id: int | list[int] | None = None) -> frozenset[int]:
        """`eos_token_id` as a set; None = the model's generation_config EOS ids (else its config's)."""
        return self.session.eos_token_ids(eos_token_id)

    def with_tree(self, tree: TreeConfig) -> "SpeculativeGenerator":
        """The same target, draft and tokenizer with another draft tree (nothing is copied or reloaded)."""
        return SpeculativeGenerator(self.target, self.draft, self.tokenizer, tree)

    # ------------------------------------------------------------------------------------------------
    def _collect(self, chunks: Iterator[StreamChunk], stats: GenerationStats) -> GenerationOutput:
        tokens, flags = [], []
        for chunk in chunks:
            tokens += chunk.token_ids
            flags += chunk.from_draft
        return GenerationOutput(tokens, self.decode(tokens), stats, flags)

    def _apply_stopping(self, steps: Steps, request: Request, stats: GenerationStats) -> Iterator[StreamChunk]:
        """Cut the raw per-forward chunks at max_new_tokens / EOS / stop strings and turn them into text."""
        progress = StreamProgress(request.stop, self.decode)
        started = time.perf_counter()
        for tokens, from_draft in steps:
            stats.target_forwards += 1
            kept, new_text = progress.add(tokens, from_draft)
            stats.new_tokens = len(progress.state.tokens)
            yield StreamChunk(tokens[:kept], new_text, from_draft[:kept])
            if progress.state.finish_reason is not None:
                break
        stats.finish_reason = progress.state.finish_reason or "length"  # steps ran out: the context is full
        stats.other_time = max(0.0, time.perf_counter() - started - stats.draft_time - stats.verify_time)
        rest = progress.flush()
        if rest is not None:
            yield StreamChunk([], rest, [])

    def _vanilla_steps(self, request: Request, stats: GenerationStats) -> Steps:
        """One token per target forward."""
        cache, device = new_cache(), self.session.device
        with timed(device, stats.add_verify_time, synchronize=False):  # int() below waits for the device
            out = self.target(request.input_ids, cache=cache)
            token = int(next_token(out.logits[0, -1], request.sampling, request.generator))
        length = request.input_ids.shape[1]  # tokens in the cache; `token` sits at position `length`
        while True:
            yield [token], [False]
            if length + 2 > self.context_length:  # the next token would not fit
                return
            with timed(device, stats.add_verify_time):
                ids = torch.tensor([[token]], device=device)
                out = self.target(ids, position_ids=torch.tensor([[length]], device=device), cache=cache)
                length += 1
                token = int(next_token(out.logits[0, -1], request.sampling, request.generator))

    def _speculative_steps(self, request: Request, stats: GenerationStats) -> Steps:
        """Prefill, then draft -> verify -> accept -> update caches until the consumer stops or context fills."""
        cache, device = new_cache(), self.session.device
        # per-stream draft cache, so interleaved streams keep their own state (None: n-gram lookup alone)
        drafter = copy.copy(self.drafter) if self.drafter is not None else None
        with timed(device, stats.add_verify_time):
            root, features = self.session.prefill(request, cache)
        yield [root], [False]
        length = request.input_ids.shape[1]  # tokens in the target cache; the root sits at position `length`
        with timed(device, stats.add_draft_time, synchronize=False):  # the proposal's timing waits for it
            lookup = self._start_proposers(drafter, request, root, features)
        while length + 2 <= self.context_length:  # room for the root and at least the bonus token
            with timed(device, stats.add_draft_time):  # draft
                tree, drafted = self._propose(drafter, lookup, root, max_depth=self.context_length - length - 2)
            with timed(device, stats.add_verify_time):
                out = self._verify_forward(tree, length, cache)  # verify
                result = verify(tree, out.logits[0], request.sampling, request.generator)  # accept
            stats.record_step(result.accept_length, tree.depth, int((result.path >= drafted).sum()))
            keep_positions(cache, length, result.path)  # update caches: the target's keeps the accepted path
            accepted = tree.tokens[result.path[1:]].tolist()
            yield accepted + [result.bonus_token], [True] * len(accepted) + [False]
            length, root = length + result.path.numel(), result.bonus_token
            with timed(device, stats.add_draft_time, synchronize=False):  # ... and the draft's follows it
                self._follow(drafter, lookup, accepted + [root], out, result)

    def _start_proposers(self, drafter: Drafter | BlockDrafter | None, request: Request, root: int,
                         features: torch.Tensor | None) -> NgramIndex | None:
        """Catch the stream's draft cache up to the prompt and the first token -> its n-gram index (or None)."""
        if drafter is not None:
            drafter.reset()
            root_ids = torch.tensor([[root]], device=self.session.device)
            drafter.catch_up(torch.cat([request.input_ids[:, 1:], root_ids], 1), features)
        return NgramIndex(request.input_ids[0].tolist() + [root]) if self.tree.lookup else None

    def _propose(self, drafter: Drafter | BlockDrafter | None, lookup: NgramIndex | None, root: int, max_depth: int
                 ) -> tuple[DraftTree, int]:
        """The draft's tree (no draft: the root alone), with the n-gram lookup chain merged in when enabled ->
        (tree, nodes the draft proposed: the lookup's own nodes come after them)."""
        if drafter is None:
            tree = DraftTree.root_only(root, self.session.device)
        else:
            tree = drafter.propose(root, max_depth=max_depth)
        drafted = tree.size
        if lookup is not None:
            tree = tree.with_chain(lookup.continuation(min(self.tree.lookup, max_depth)))
        return tree, drafted

    def _verify_forward(self, tree: DraftTree, length: int, cache) -> TargetOutput:
        """ONE target forward over the tree: node i sees the `length` cached tokens and its own ancestors."""
        mask = torch.cat([torch.ones(tree.size, length, dtype=torch.bool, device=self.session.device), tree.mask], 1)
        return self.target(tree.tokens[None], position_ids=(tree.depths + length)[None],
                           attention_mask=mask[None, None], cache=cache, aux_layer_ids=self.aux_layer_ids)

    def _follow(self, drafter: Drafter | BlockDrafter | None, lookup: NgramIndex | None, tokens: list[int], out: TargetOutput,
                result: VerifyResult) -> None:
        """The draft cache and the n-gram index follow the accepted path: `tokens` (accepted + bonus) are
        x_{t+1} for the path positions t, whose target features f_t the verification forward computed."""
        if lookup is not None:
            lookup.extend(tokens)
        if drafter is not None:
            next_ids = torch.tensor([tokens], device=self.session.device)
            drafter.catch_up(next_ids, self.session.draft_features(out)[:, result.path])
