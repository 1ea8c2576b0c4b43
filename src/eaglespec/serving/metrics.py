"""Prometheus metrics of one server (its own registry, so several servers in one process never share counts)."""

from __future__ import annotations

import time

from eaglespec.serving.scheduler import GenerationJob

TAU_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)  # tokens per target forward
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


class ServerMetrics:
    """HTTP requests by endpoint and status; per generation: outcome, tokens, tau, time to first token, latency;
    queue depth and active streams. Implements the scheduler's observer interface."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("eaglespec_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.generations = Counter("eaglespec_generations", "Generations by outcome (stop, length, cancelled, "
                                   "timeout, internal, shutdown)", ["outcome"], registry=r)
        self.prompt_tokens = Counter("eaglespec_prompt_tokens", "Prompt tokens of started generations", registry=r)
        self.generation_tokens = Counter("eaglespec_generation_tokens", "Tokens generated (cancelled ones "
                                         "included)", registry=r)
        self.draft_tokens = Counter("eaglespec_draft_accepted_tokens", "Generated tokens proposed by the draft",
                                    registry=r)
        self.tau = Histogram("eaglespec_tau", "Tokens per target forward of each finished generation",
                             buckets=TAU_BUCKETS, registry=r)
        self.ttft = Histogram("eaglespec_time_to_first_token_seconds", "Arrival to first generated token "
                              "(queueing and prefill)", buckets=SECONDS_BUCKETS, registry=r)
        self.latency = Histogram("eaglespec_request_latency_seconds", "Arrival to the end of a generation, "
                                 "whatever its outcome", buckets=SECONDS_BUCKETS, registry=r)
        self.queue_depth = Gauge("eaglespec_queue_depth", "Requests waiting for a stream slot", registry=r)
        self.active = Gauge("eaglespec_active_streams", "Streams being decoded", registry=r)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- SchedulerObserver ------------------------------------------------------------------------------------
    def queue_changed(self, waiting: int, active: int) -> None:
        self.queue_depth.set(waiting)
        self.active.set(active)

    def first_token(self, job: GenerationJob) -> None:
        self.ttft.observe(job.first_token_at - job.arrived)

    def finished(self, job: GenerationJob) -> None:
        stats = job.stats
        self.generations.labels(job.outcome).inc()
        self.latency.observe(time.monotonic() - job.arrived)
        if job.first_token_at is None:
            return  # never started: no tokens, no tau
        self.prompt_tokens.inc(len(job.input_ids))
        self.generation_tokens.inc(job.tokens)
        self.draft_tokens.inc(job.draft_tokens)
        if job.outcome in ("stop", "length"):
            self.tau.observe(stats.tau)
