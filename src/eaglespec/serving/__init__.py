"""OpenAI-compatible HTTP serving of speculative decoding: completions and chat (streaming as server-sent
events), a web chat page that marks draft-accepted tokens, /health and Prometheus /metrics. One model thread
decodes all requests, round-robin or as one continuous batch; `eaglespec serve` runs it."""

from eaglespec.serving.config import ServeConfig, is_loopback_host

__all__ = ["ServeConfig", "ServerThread", "create_app", "is_loopback_host", "run_server"]


def __getattr__(name: str):
    """create_app / run_server / ServerThread need FastAPI and uvicorn (the `serve` extra): imported on use."""
    if name in ("create_app",):
        from eaglespec.serving.app import create_app

        return create_app
    if name in ("run_server", "ServerThread"):
        from eaglespec.serving import server

        return getattr(server, name)
    raise AttributeError(name)
