"""Training of EAGLE-1 and EAGLE-3 draft heads: losses, training-time test, one train loop behind an
Engine (plain / DDP / DeepSpeed), metrics with a simulated acceptance length, atomic checkpoints."""

from eaglespec.training.checkpoint import TrainState, find_latest_complete
from eaglespec.training.config import CommonTrainConfig, Eagle1TrainConfig, Eagle3TrainConfig
from eaglespec.training.engine import Engine, PlainEngine, make_engine
from eaglespec.training.run import TrainResult, train_eagle1, train_eagle3

__all__ = [
    "CommonTrainConfig",
    "Eagle1TrainConfig",
    "Eagle3TrainConfig",
    "Engine",
    "PlainEngine",
    "TrainResult",
    "TrainState",
    "find_latest_complete",
    "make_engine",
    "train_eagle1",
    "train_eagle3",
]
