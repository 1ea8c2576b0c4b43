"""Training data: read chat / FIM / text records, tokenize them with exact loss masks, build the EAGLE-3 draft
vocabulary, and the feature store layout (`eaglespec.distill` self-distils and dumps target features)."""

from eaglespec.data.prepare import PrepareMeta, PrepareStats, load_prepared, prepare_dataset
from eaglespec.data.vocab import DraftVocab, build_draft_vocab

__all__ = ["DraftVocab", "PrepareMeta", "PrepareStats", "build_draft_vocab", "load_prepared", "prepare_dataset"]
