"""`SpeculativeGenerator`: exact tree speculative decoding (and the vanilla baseline) for any HF causal LM.

One speculative step reads like the paper:
    tree = drafter.propose(root)                         # draft: EAGLE-2 dynamic / static / chain tree
    tree = tree.with_chain(lookup.continuation(n))       # (optional) n-gram lookup merged in (`lookup.py`)
    logits = target(tree tokens, tree mask, positions)  # verify: ONE target forward over the whole tree
    result = verify(tree, logits)                        # accept: greedy or lossless rejection sampling
    keep_positions(target cache, accepted path)          # update caches: keep exactly the accepted path
    drafter.catch_up(accepted tokens, target features)   # the draft cache follows the accepted prefix
Batch size 1 (`batch.py` batches it). Without a draft, n-gram lookup alone (`TreeConfig.lookup`) proposes.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from eaglespec.decoding.cache import keep_positions, new_cache
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.lookup import NgramIndex
from eaglespec.decoding.sampling import SamplingConfig, next_token
from eaglespec.decoding.stopping import StopRule, StreamProgress
from eaglespec.decoding.tree import DraftTree, TreeConfig
from eaglespec.decoding.verify import verify
from eaglespec.models import EagleDraftModel, TargetModel, check_draft_matches_target

Prompt = torch.Tensor | list[int] | str | list[dict]


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate within the model's context."""


@dataclass
class GenerationStats:
    new_tokens: int = 0
    target_forwards: int = 0  # prefill + one per verification step
    accept_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per step (bonus excluded)
    depth_attempts: list[int] = field(default_factory=list)  # [d-1]: steps whose walk reached depth d-1
    depth_accepts: list[int] = field(default_factory=list)  # [d-1]: steps that accepted a node at depth d
    lookup_tokens: int = 0  # of the accepted draft tokens (accept_lengths), those only the n-gram lookup proposed
    draft_time: float = 0.0  # seconds in draft forwards and tree building
    verify_time: float = 0.0  # seconds in target forwards (prefill included) and acceptance
    other_time: float = 0.0  # the rest of the wall time (cache surgery, stopping, text; while streaming,
    #                           also the time the consumer spends between chunks)
    finish_reason: str = ""  # "stop" (EOS / stop string) or "length" (max_new_tokens / context full)

    @property
    def tau(self) -> float:
        """Average tokens per target forward (vanilla decoding: 1.0)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate_per_depth(self) -> list[float]:
        return [a / n if n else 0.0 for a, n in zip(self.depth_accepts, self.depth_attempts)]

    def record_step(self, accept_length: int, tree_depth: int, lookup_tokens: int = 0) -> None:
        self.accept_lengths.append(accept_length)
        self.lookup_tokens += lookup_tokens
        while len(self.depth_attempts) < tree_depth:
            self.depth_attempts.append(0)
            self.depth_accepts.append(0)
        for d in range(min(accept_length + 1, tree_depth)):
            self.depth_attempts[d] += 1
            self.depth_accepts[d] += int(d < accept_length)

    def to_dict(self) -> dict:
        return {**asdict(self), "tau": self.tau, "acceptance_rate_per_depth": self.acceptance_rate_per_depth}


@dataclass
class StreamChunk:
    token_ids: list[int]  # new tokens accepted by one target forward (after stopping rules)
    text: str  # the text they add
    from_draft: list[bool]  # per token: proposed by the draft and accepted (False: target's own token)


@dataclass
class GenerationOutput:
    token_ids: list[int]  # new tokens only
    text: str
    stats: GenerationStats
    from_draft: list[bool]
    error: str | None = None  # batched decoding: why this prompt was not decoded (stats.finish_reason "error")


@dataclass
class _Request:
    input_ids: torch.Tensor  # [1, n]
    sampling: SamplingConfig
    stop: StopRule
    generator: torch.Generator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def context_length(config) -> int:
    """Longest sequence decoded exactly. Caches keep every position and the tree mask is full-causal, which
    equals sliding-window attention while the sequence fits the window, so windowed models stop there."""
    limit = int(getattr(config, "max_position_embeddings", None) or 2048)
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    windowed = "sliding_attention" in layer_types or (not layer_types and getattr(config, "use_sliding_window", True))
    if window and windowed:
        limit = min(limit, int(window))
    return limit


class SpeculativeGenerator:
    """Speculative (and vanilla) generation with a target and an optional EAGLE draft. Batch size 1."""

    def __init__(self, target: TargetModel, draft: EagleDraftModel | None, tokenizer=None,
                 tree: TreeConfig | None = None):
        self.target = target
        self.draft = draft
        self.tokenizer = tokenizer
        self.tree = tree or TreeConfig()
        self.drafter: Drafter | None = None
        self.aux_layer_ids = None
        if draft is not None:
            check_draft_matches_target(draft.config, target.config)
            self.drafter = Drafter(draft, self.tree)
            self.aux_layer_ids = draft.config.aux_layer_ids if draft.config.method == "eagle3" else None
        self.context_length = context_length(target.config)

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike, draft: str | os.PathLike | None,
                        dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                        **tree_kwargs) -> "SpeculativeGenerator":
        """base: HF model dir (or 'stories260K'); draft: an eaglespec draft dir (None: vanilla only).
        tree_kwargs (TreeConfig fields) override the draft's tuned tree (`eaglespec tune`), if it has one."""
        from transformers import AutoTokenizer

        from eaglespec.models import resolve_model_path

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        base = resolve_model_path(base)
        target = TargetModel.from_pretrained(base, dtype=dtype, device=device)
        model = None
        if draft is not None:
            model = EagleDraftModel.from_pretrained(resolve_model_path(draft), target=target, dtype=target.dtype,
                                                    device=target.device)
        tokenizer = AutoTokenizer.from_pretrained(base)
        tuned = (model.config.decoding or {}).get("tree") if model is not None else None
        return cls(target, model, tokenizer, TreeConfig.merged(tuned, tree_kwargs))

    # ------------------------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, max_new_tokens: int = 128, **kwargs) -> GenerationOutput:
        """Speculative generation. kwargs: temperature, top_p, top_k, eos_token_id, stop, seed (see stream)."""
        stats = GenerationStats()
        return self._collect(self.stream(prompt, max_new_tokens, stats=stats, **kwargs), stats)

    def vanilla_generate(self, prompt: Prompt, max_new_tokens: int = 128, **kwargs) -> GenerationOutput:
        """Plain target decoding with the KV cache, same interface and stats (the baseline)."""
        stats = GenerationStats()
        return self._collect(self.stream(prompt, max_new_tokens, vanilla=True, stats=stats, **kwargs), stats)

    def generate_batch(self, prompts, max_new_tokens: int = 128, **kwargs):
        """Several prompts in one batched loop -> `decoding.batch.BatchResult` (outputs in prompt order, wall
        time). kwargs: vanilla, max_batch_size, temperature, top_p, top_k, eos_token_id, stop, seed."""
        from eaglespec.decoding.batch import generate_batch

        return generate_batch(self, prompts, max_new_tokens, **kwargs)

    def stream_batch(self, prompts, max_new_tokens: int = 128, **kwargs):
        """`generate_batch` as an iterator of `decoding.batch.StepEvent`s (request_id = prompt index)."""
        from eaglespec.decoding.batch import stream_batch

        return stream_batch(self, prompts, max_new_tokens, **kwargs)

    def running_batch(self, vanilla: bool = False, max_batch_size: int | None = None):
        """A `decoding.batch.RunningBatch` for continuous batching: add() requests, step() until empty."""
        from eaglespec.decoding.batch import RunningBatch

        return RunningBatch(self, vanilla=vanilla, max_batch_size=max_batch_size)

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, eos_token_id: int | list[int] | None = None, stop: list[str] | str | None = None,
               seed: int | None = None, vanilla: bool = False, stats: GenerationStats | None = None,
               ) -> Iterator[StreamChunk]:
        """Yield chunks of accepted tokens as each target forward accepts them. Pass `stats` to read the
        statistics (finish_reason included) once the iterator is exhausted."""
        request = self._request(prompt, max_new_tokens, temperature, top_p, top_k, eos_token_id, stop, seed)
        if not vanilla and self.drafter is None and not self.tree.lookup:
            raise ValueError("speculative decoding needs a draft model or n-gram lookup (a tree with lookup > 0); "
                             "use vanilla_generate() without either")
        stats = stats if stats is not None else GenerationStats()
        steps = self._vanilla_steps(request, stats) if vanilla else self._speculative_steps(request, stats)
        yield from self._apply_stopping(steps, request, stats)

    # ------------------------------------------------------------------------------------------------
    def _collect(self, chunks: Iterator[StreamChunk], stats: GenerationStats) -> GenerationOutput:
        tokens, flags = [], []
        for chunk in chunks:
            tokens += chunk.token_ids
            flags += chunk.from_draft
        return GenerationOutput(tokens, self._decode(tokens), stats, flags)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""

    def _encode(self, prompt: Prompt) -> torch.Tensor:
        """ids tensor / list of ids / text / chat messages -> input ids [1, n] on the target device."""
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
            if self.tokenizer is None:
                raise ValueError("a text or chat prompt needs a tokenizer; pass token ids or give the generator one")
            if isinstance(prompt, str):
                ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
            elif getattr(self.tokenizer, "chat_template", None) is None:
                raise ValueError("this tokenizer has no chat template: pass the prompt as plain text instead")
            else:
                ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)["input_ids"]
        else:
            ids = torch.as_tensor(prompt, dtype=torch.long)
        ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"batch size 1 only: expected input ids of shape [n] or [1, n], got {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError("empty prompt: give at least one token (e.g. BOS)")
        if ids.shape[1] >= self.context_length:
            raise PromptTooLong(f"prompt has {ids.shape[1]} tokens; the model's context holds {self.context_length}, "
                                f"so at most {self.context_length - 1} prompt tokens leave room to generate")
        return ids.to(self.target.device)

    def eos_token_ids(self, eos_token_id: int | list[int] | None = None) -> frozenset[int]:
        """`eos_token_id` as a set; None = the model's generation_config EOS ids (else its config's)."""
        if eos_token_id is None:
            eos_token_id = self.target.model.generation_config.eos_token_id
            eos_token_id = self.target.config.eos_token_id if eos_token_id is None else eos_token_id
        return frozenset([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))

    def with_tree(self, tree: TreeConfig) -> "SpeculativeGenerator":
        """The same target, draft and tokenizer with another draft tree (nothing is copied or reloaded)."""
        return SpeculativeGenerator(self.target, self.draft, self.tokenizer, tree)

    def _request(self, prompt, max_new_tokens, temperature, top_p, top_k, eos_token_id, stop, seed) -> _Request:
        sampling = SamplingConfig(float(temperature), float(top_p), int(top_k))
        eos = self.eos_token_ids(eos_token_id)
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        decode = self._decode if self.tokenizer is not None else None
        rule = StopRule(int(max_new_tokens), eos, stop, decode)
        generator = torch.Generator(device=self.target.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        return _Request(self._encode(prompt), sampling, rule, generator)

    def _apply_stopping(self, steps: Iterator[tuple[list[int], list[bool]]], request: _Request,
                        stats: GenerationStats) -> Iterator[StreamChunk]:
        """Cut the raw per-forward chunks at max_new_tokens / EOS / stop strings and turn them into text."""
        progress = StreamProgress(request.stop, self._decode)
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

    # ------------------------------------------------------------------------------------------------
    def _prefill(self, request: _Request, cache) -> tuple[int, torch.Tensor]:
        """Target forward over the prompt -> (first new token, target features of the prompt [1, n, F])."""
        out = self.target(request.input_ids, cache=cache, aux_layer_ids=self.aux_layer_ids)
        token = int(next_token(out.logits[0, -1], request.sampling, request.generator))
        features = out.features(self.draft.config.method) if self.draft is not None else None
        return token, features

    def _vanilla_steps(self, request: _Request, stats: GenerationStats) -> Iterator[tuple[list[int], list[bool]]]:
        """One token per target forward."""
        cache, device = new_cache(), self.target.device
        clock = time.perf_counter()
        out = self.target(request.input_ids, cache=cache)
        token = int(next_token(out.logits[0, -1], request.sampling, request.generator))
        length = request.input_ids.shape[1]  # tokens in the cache; `token` sits at position `length`
        while True:
            stats.verify_time += time.perf_counter() - clock
            yield [token], [False]
            if length + 2 > self.context_length:  # the next token would not fit
                return
            clock = time.perf_counter()
            ids = torch.tensor([[token]], device=device)
            out = self.target(ids, position_ids=torch.tensor([[length]], device=device), cache=cache)
            length += 1
            token = int(next_token(out.logits[0, -1], request.sampling, request.generator))
            _sync(device)

    def _propose(self, drafter: Drafter | None, lookup: NgramIndex | None, root: int, max_depth: int
                 ) -> tuple[DraftTree, int]:
        """The draft's tree (no draft: the root alone), with the n-gram lookup chain merged in when enabled ->
        (tree, nodes the draft proposed: the lookup's own nodes come after them)."""
        if drafter is None:
            tree = DraftTree.root_only(root, self.target.device)
        else:
            tree = drafter.propose(root, max_depth=max_depth)
        drafted = tree.size
        if lookup is not None:
            tree = tree.with_chain(lookup.continuation(min(self.tree.lookup, max_depth)))
        return tree, drafted

    def _speculative_steps(self, request: _Request, stats: GenerationStats
                           ) -> Iterator[tuple[list[int], list[bool]]]:
        """Prefill, then draft -> verify -> accept -> update caches until the consumer stops or context fills."""
        cache, device = new_cache(), self.target.device
        # per-stream draft cache, so interleaved streams keep their own state (None: n-gram lookup alone)
        drafter = copy.copy(self.drafter) if self.drafter is not None else None
        clock = time.perf_counter()
        root, features = self._prefill(request, cache)
        _sync(device)
        stats.verify_time += time.perf_counter() - clock
        yield [root], [False]
        length = request.input_ids.shape[1]  # tokens in the target cache; the root sits at position `length`
        clock = time.perf_counter()
        if drafter is not None:
            drafter.reset()
            drafter.catch_up(torch.cat([request.input_ids[:, 1:], torch.tensor([[root]], device=device)], 1),
                             features)
        lookup = NgramIndex(request.input_ids[0].tolist() + [root]) if self.tree.lookup else None
        while length + 2 <= self.context_length:  # room for the root and at least the bonus token
            tree, drafted = self._propose(drafter, lookup, root, max_depth=self.context_length - length - 2)
            _sync(device)
            stats.draft_time += time.perf_counter() - clock
            clock = time.perf_counter()
            mask = torch.cat([torch.ones(tree.size, length, dtype=torch.bool, device=device), tree.mask], 1)
            out = self.target(tree.tokens[None], position_ids=(tree.depths + length)[None],
                              attention_mask=mask[None, None], cache=cache, aux_layer_ids=self.aux_layer_ids)
            result = verify(tree, out.logits[0], request.sampling, request.generator)
            _sync(device)
            stats.verify_time += time.perf_counter() - clock
            stats.record_step(result.accept_length, tree.depth, int((result.path >= drafted).sum()))
            keep_positions(cache, length, result.path)
            accepted = tree.tokens[result.path[1:]].tolist()
            yield accepted + [result.bonus_token], [True] * len(accepted) + [False]
            clock = time.perf_counter()
            length += result.path.numel()
            root = result.bonus_token
            if lookup is not None:
                lookup.extend(accepted + [root])
            if drafter is not None:
                next_ids = torch.tensor([accepted + [root]], device=device)  # x_{t+1} for the path positions t
                drafter.catch_up(next_ids, out.features(self.draft.config.method)[:, result.path])
