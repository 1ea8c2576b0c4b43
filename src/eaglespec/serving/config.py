"""`ServeConfig`: every server setting and its default, in one place (the CLI reads its defaults from here)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback: nothing outside this machine can connect unless asked for
    port: int = 8000
    api_key: str | None = None  # when set, every endpoint but /health needs `Authorization: Bearer KEY`
    served_model_name: str = ""  # the `model` clients must name; "" = the target directory's name
    max_concurrency: int = 4  # requests being decoded at once
    max_batch_size: int = 1  # 1: round-robin over batch-size-1 streams, one step each; B > 1: continuous batching,
    #                          up to B of the active requests share each target forward (decoding.batch)
    queue_size: int = 16  # requests waiting for a stream slot; one more gets 429
    max_new_tokens_limit: int = 1024  # the largest max_tokens a request may ask for (more: 400)
    request_timeout: float = 600.0  # seconds from arrival (queueing included) until a request is stopped
    max_request_bytes: int = 4 * 1024 * 1024  # request bodies above this get 413 (4 MiB: ~500k tokens as ids)

    def __post_init__(self) -> None:
        checks = [("port", 0 <= self.port <= 65535, "between 0 and 65535"),
                  ("max_concurrency", self.max_concurrency >= 1, ">= 1"),
                  ("max_batch_size", self.max_batch_size >= 1, ">= 1"),
                  ("queue_size", self.queue_size >= 0, ">= 0"),
                  ("max_new_tokens_limit", self.max_new_tokens_limit >= 1, ">= 1"),
                  ("request_timeout", self.request_timeout > 0, "> 0"),
                  ("max_request_bytes", self.max_request_bytes >= 1, ">= 1")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"serve: {name} must be {expected}, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("serve: api_key must not be empty (leave it unset for no authentication)")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0 and real interfaces."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
