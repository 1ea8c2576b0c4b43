"""Lossless tree speculative decoding (EAGLE-1 / EAGLE-3 drafts, dynamic / static / chain trees) for any HF
causal LM, plus the vanilla baseline through the same interface."""

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
    "DraftTree",
    "GenerationOutput",
    "GenerationStats",
    "SamplingConfig",
    "SpeculativeGenerator",
    "StreamChunk",
    "TreeConfig",
    "context_length",
]
