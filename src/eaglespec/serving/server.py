"""Run the app with uvicorn: in the foreground (`eaglespec serve`) or in a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.serving.app import create_app
from eaglespec.serving.config import ServeConfig

GRACEFUL_SHUTDOWN_SECONDS = 5  # open streams get this long after Ctrl-C / should_exit before they are cut
STARTUP_TIMEOUT_SECONDS = 30


def _server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return uvicorn.Server(config)


def run_server(generator: SpeculativeGenerator, config: ServeConfig, log_level: str = "info") -> None:
    """Serve until interrupted."""
    sock = _bind(config.host, config.port)
    _server(create_app(generator, config), log_level).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ValueError(f"serve: cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


class ServerThread:
    """`with ServerThread(generator, config) as url:` serves on `config.host` (port 0: a free one) in a
    background thread of this process until the block ends."""

    def __init__(self, generator: SpeculativeGenerator, config: ServeConfig, log_level: str = "warning"):
        self.app = create_app(generator, config)
        self.sock = _bind(config.host, config.port)
        self.port = self.sock.getsockname()[1]
        host = config.host if ":" not in config.host else f"[{config.host.strip('[]')}]"
        self.url = f"http://{host}:{self.port}"
        self.server = _server(self.app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="eaglespec-http")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(GRACEFUL_SHUTDOWN_SECONDS + 5)
        self.sock.close()
