"""`DecodingSession`: what every decoding loop over one target shares, and the requests it decodes.

It holds the target, the optional draft (with its batch-size-1 `Drafter`, or `BlockDrafter` for DFlash, and the
tree settings) and the tokenizer; it turns a prompt and `GenerationOptions` into a `Request`, token ids into text, and runs a
request's prefill. `SpeculativeGenerator` (batch size 1, `generate.py`) and `RunningBatch` (`batch.py`) both
decode through one, so neither needs the other's internals.
"""

from __future__ import annotations

import torch

from eaglespec.decoding.block_drafter import BlockDrafter
from eaglespec.decoding.drafter import Drafter
from eaglespec.decoding.options import GenerationOptions
from eaglespec.decoding.request import Prompt, Request, check_prompt_length, context_length, encode_prompt
from eaglespec.decoding.sampling import next_token
from eaglespec.decoding.stopping import StopRule
from eaglespec.decoding.tree import TreeConfig
from eaglespec.models import DFlashDraftModel, EagleDraftModel, TargetModel, check_draft_matches_target
from eaglespec.models.config import FEATURE_METHODS
from eaglespec.models.target import TargetOutput


class DecodingSession:
    """A target, an optional draft and a tokenizer, ready to decode requests (any number, interleaved)."""

    def __init__(self, target: TargetModel, draft: EagleDraftModel | DFlashDraftModel | None, tokenizer=None,
                 tree: TreeConfig | None = None):
        self.target = target
        self.draft = draft
        self.tokenizer = tokenizer
        self.tree = tree or TreeConfig()
        self.drafter: Drafter | BlockDrafter | None = None
        self.aux_layer_ids = None  # EAGLE-3 / DFlash: the target layers whose hidden states feed the draft
        if draft is not None:
            check_draft_matches_target(draft.config, target.config)
            self.drafter = (BlockDrafter(draft, self.tree.depth) if draft.config.is_dflash
                            else Drafter(draft, self.tree))
            self.aux_layer_ids = draft.config.aux_layer_ids if draft.config.method in FEATURE_METHODS else None
        self.context_length = context_length(target.config)

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def can_speculate(self) -> bool:
        """A draft or the n-gram lookup (TreeConfig.lookup > 0) can propose tokens."""
        return self.drafter is not None or bool(self.tree.lookup)

    def encode(self, prompt: Prompt) -> torch.Tensor:
        """ids tensor / list of ids / text / chat messages -> input ids [1, n] on the target device (ValueError
        for an empty prompt, PromptTooLong when it leaves no room to generate)."""
        ids = encode_prompt(self.tokenizer, prompt)
        check_prompt_length(ids.shape[1], self.context_length)
        return ids.to(self.device)

    def decode(self, tokens: list[int]) -> str:
        """Token ids -> text without special tokens ("" without a tokenizer)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""

    def eos_token_ids(self, eos_token_id: int | list[int] | tuple[int, ...] | None = None) -> frozenset[int]:
        """`eos_token_id` as a set; None = the model's generation_config EOS ids (else its config's)."""
        if eos_token_id is None:
            eos_token_id = self.target.model.generation_config.eos_token_id
            eos_token_id = self.target.config.eos_token_id if eos_token_id is None else eos_token_id
        return frozenset([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))

    def request(self, prompt: Prompt, options: GenerationOptions) -> Request:
        """A prompt with its options, checked and encoded, with its own RNG (seeded when options.seed is set)."""
        decode = self.decode if self.tokenizer is not None else None
        rule = StopRule(options.max_new_tokens, self.eos_token_ids(options.eos_token_id), options.stop, decode)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(options.seed) if options.seed is not None else generator.seed()
        return Request(self.encode(prompt), options.sampling, rule, generator)

    def prefill(self, request: Request, cache) -> tuple[int, torch.Tensor | None]:
        """Target forward over the prompt -> (first new token, target features of the prompt [1, n, F], None
        without a draft)."""
        out = self.target(request.input_ids, cache=cache, aux_layer_ids=self.aux_layer_ids)
        token = int(next_token(out.logits[0, -1], request.sampling, request.generator))
        return token, self.draft_features(out)

    def draft_features(self, out: TargetOutput) -> torch.Tensor | None:
        """The target features the draft reads from a target forward [B, T, F] (None without a draft)."""
        return out.features(self.draft.config.method) if self.draft is not None else None
