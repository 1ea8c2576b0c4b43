"""Lossless tree speculative decoding (EAGLE-1 / EAGLE-3 drafts, dynamic / static / chain trees) for any HF
causal LM, plus the vanilla baseline through the same interface; batched (`RunningBatch`, `generate_batch`).

The public surface other packages use: `SpeculativeGenerator` (and its `DecodingSession`), `GenerationOptions`
(what a request asks for), `encode_prompt` / `check_prompt_length` / `context_length` / `PromptTooLong` (prompt
checks), `sync` / `timed` (device timing), the output dataclasses and the tree settings."""

from eaglespec.decoding.batch import BatchResult, RequestTiming, RunningBatch, StepEvent
from eaglespec.decoding.generate import SpeculativeGenerator
from eaglespec.decoding.options import GenerationOptions, InvalidOption, generation_options
from eaglespec.decoding.outputs import GenerationOutput, GenerationStats, StreamChunk
from eaglespec.decoding.request import (
    Prompt,
    PromptTooLong,
    Request,
    check_prompt_length,
    context_length,
    encode_prompt,
)
from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.decoding.session import DecodingSession
from eaglespec.decoding.timing import sync, timed
from eaglespec.decoding.tree import MC_SIM_7B_63, DraftTree, TreeConfig

__all__ = [
    "MC_SIM_7B_63",
    "BatchResult",
    "DecodingSession",
    "DraftTree",
    "GenerationOptions",
    "GenerationOutput",
    "GenerationStats",
    "InvalidOption",
    "Prompt",
    "PromptTooLong",
    "Request",
    "RequestTiming",
    "RunningBatch",
    "SamplingConfig",
    "SpeculativeGenerator",
    "StepEvent",
    "StreamChunk",
    "TreeConfig",
    "check_prompt_length",
    "context_length",
    "encode_prompt",
    "generation_options",
    "sync",
    "timed",
]
