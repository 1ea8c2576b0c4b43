"""Measure speculative decoding against the vanilla baseline: acceptance length, tokens/s, exactness."""

from eaglespec.evaluation.compare import ComparisonReport, PromptComparison, compare_with_vanilla

__all__ = ["ComparisonReport", "PromptComparison", "compare_with_vanilla"]
