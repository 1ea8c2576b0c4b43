"""What decoding hands back: per-forward `StreamChunk`s, a finished `GenerationOutput` and its `GenerationStats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    new_tokens: int = 0
    target_forwards: int = 0  # prefill + one per verification step
    accept_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per step (bonus excluded)
    depth_attempts: list[int] = field(default_factory=list)  # [d-1]: steps whose walk reached depth d-1
    depth_accepts: list[int] = field(default_factory=list)  # [d-1]: steps that accepted a node at depth d
    lookup_tokens: int = 0  # of the accepted draft tokens (accept_lengths), those only the n-gram lookup proposed
    draft_time: float = 0.0  # seconds in draft forwards and tree building
    verify_time: float = 0.0  # seconds in target forwards (prefill included) and acceptance
    other_time: float = 0.0  # the rest of the wall time (cache surgery, stopping, text; while streaming,
    #                           also the time the consumer spends between chunks)
    finish_reason: str = ""  # "stop" (EOS / stop string) or "length" (max_new_tokens / context full)

    @property
    def tau(self) -> float:
        """Average tokens per target forward (vanilla decoding: 1.0)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate_per_depth(self) -> list[float]:
        return [a / n if n else 0.0 for a, n in zip(self.depth_accepts, self.depth_attempts)]

    def add_draft_time(self, seconds: float) -> None:
        self.draft_time += seconds

    def add_verify_time(self, seconds: float) -> None:
        self.verify_time += seconds

    def record_step(self, accept_length: int, tree_depth: int, lookup_tokens: int = 0) -> None:
        self.accept_lengths.append(accept_length)
        self.lookup_tokens += lookup_tokens
        while len(self.depth_attempts) < tree_depth:
            self.depth_attempts.append(0)
            self.depth_accepts.append(0)
        for d in range(min(accept_length + 1, tree_depth)):
            self.depth_attempts[d] += 1
            self.depth_accepts[d] += int(d < accept_length)

    def to_dict(self) -> dict:
        return {**asdict(self), "tau": self.tau, "acceptance_rate_per_depth": self.acceptance_rate_per_depth}


@dataclass
class StreamChunk:
    token_ids: list[int]  # new tokens accepted by one target forward (after stopping rules)
    text: str  # the text they add
    from_draft: list[bool]  # per token: proposed by the draft and accepted (False: target's own token)


@dataclass
class GenerationOutput:
    token_ids: list[int]  # new tokens only
    text: str
    stats: GenerationStats
    from_draft: list[bool]
    error: str | None = None  # batched decoding: why this prompt was not decoded (stats.finish_reason "error")
