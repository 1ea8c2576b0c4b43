"""The data stages that run models: feature dumping (target hidden states for offline training; the store's layout
and reading live in `eaglespec.data.features`)."""

from eaglespec.distill.features import check_features_match, dump_features, target_identity

__all__ = ["check_features_match", "dump_features", "target_identity"]
