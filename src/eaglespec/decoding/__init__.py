"""Lossless tree speculative decoding (EAGLE-1 / EAGLE-3 drafts, dynamic / static / chain trees) for any HF
causal LM, plus the vanilla baseline through the same interface; batched (`RunningBatch`, `generate_batch`)."""

from eaglespec.decoding.batch import BatchResult, RequestTiming, RunningBatch, StepEvent
from eaglespec.decoding.generate import (
    GenerationOutput,
    GenerationStats,
    SpeculativeGenerator,
    StreamChunk,
    context_length,
)
from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.decoding.tree import MC_SIM_7B_63, DraftTree, TreeConfig

__all__ = [
    "MC_SIM_7B_63",
    "BatchResult",
    "DraftTree",
    "GenerationOutput",
    "GenerationStats",
    "RequestTiming",
    "RunningBatch",
    "SamplingConfig",
    "SpeculativeGenerator",
    "StepEvent",
    "StreamChunk",
    "TreeConfig",
    "context_length",
]
