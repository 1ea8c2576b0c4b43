"""The data stages that run models: self-distillation (the target, or an OpenAI-compatible server, re-answers a
dataset, samples from BOS or writes chats itself; resumable JSON Lines) and feature dumping (target hidden states
for offline training). Generation goes through `eaglespec.decoding`; formats come from `eaglespec.data`."""

from eaglespec.distill.features import check_features_match, dump_features, target_identity
from eaglespec.distill.jobs import Completion, JobPrompt, RegenerationJob
from eaglespec.distill.local import LocalEngine
from eaglespec.distill.run import (
    DEFAULT_BATCH_SIZE,
    RegeneratePlan,
    RegenerateSummary,
    plan_regeneration,
    regenerate,
    regenerate_file,
    regenerate_from_bos,
    regenerate_sampled_chats,
    run_plan,
)
from eaglespec.distill.server import ServerConfig, ServerEngine
from eaglespec.distill.sources import JobSet, bos_jobs, file_jobs, sampled_chat_jobs

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Completion",
    "JobSet",
    "LocalEngine",
    "JobPrompt",
    "RegeneratePlan",
    "RegenerateSummary",
    "RegenerationJob",
    "ServerConfig",
    "ServerEngine",
    "bos_jobs",
    "check_features_match",
    "dump_features",
    "file_jobs",
    "plan_regeneration",
    "regenerate",
    "regenerate_file",
    "regenerate_from_bos",
    "regenerate_sampled_chats",
    "run_plan",
    "sampled_chat_jobs",
    "target_identity",
]
