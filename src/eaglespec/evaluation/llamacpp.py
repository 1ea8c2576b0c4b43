"""A llama.cpp `llama-server` on loopback, started for one run and always stopped, and greedy completions from it
given token ids (so its prompts are exactly ours), with llama.cpp's own timings and draft acceptance.

The pinned build is made by tests/interop/build_envs.sh (`llama.cpp`); its binaries land in
$EAGLESPEC_INTEROP_HOME/llama.cpp/build/bin (default ~/.cache/eaglespec-interop).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eaglespec.evaluation.methods import MethodRun, Sampling

HOST = "127.0.0.1"  # loopback only: the server is a private helper of this process
BUILD_HINT = "build the pinned llama.cpp with `tests/interop/build_envs.sh llama.cpp`"
START_TIMEOUT_S = 300.0  # model load + warm-up on a slow, shared 2-core CPU
REQUEST_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0
EXIT_SETTLE_S = 2.0
LOG_TAIL_CHARS = 3000
DEFAULT_DRAFT_N_MAX = 3  # llama.cpp's own default chain length
DEFAULT_DRAFT_P_MIN = 0.0  # llama.cpp's default: draft the whole chain whatever the draft's confidence


def interop_home() -> Path:
    return Path(os.environ.get("EAGLESPEC_INTEROP_HOME", Path.home() / ".cache" / "eaglespec-interop"))


def default_llama_server() -> Path:
    return interop_home() / "llama.cpp" / "build" / "bin" / "llama-server"


@dataclass(frozen=True)
class LlamaServerConfig:
    """How to start one llama-server: the target GGUF, optionally an EAGLE-3 draft GGUF and its chain flags."""

    binary: Path
    model: Path
    draft: Path | None = None
    draft_n_max: int = DEFAULT_DRAFT_N_MAX
    draft_p_min: float = DEFAULT_DRAFT_P_MIN
    threads: int = max(1, os.cpu_count() or 1)
    context: int = 4096
    extra_args: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        cmd = [str(self.binary), "-m", str(self.model), "--host", HOST, "--port", str(port), "-t", str(self.threads),
               "-c", str(self.context), "-np", "1", "--no-webui", *self.extra_args]
        if self.draft is not None:
            cmd += ["-md", str(self.draft), "--spec-type", "draft-eagle3", "--spec-draft-n-max", str(self.draft_n_max),
                    "--spec-draft-p-min", str(self.draft_p_min), "-td", str(self.threads)]
        return cmd


@dataclass(frozen=True)
class LlamaCompletion:
    """One greedy completion: the new token ids and llama.cpp's timings (milliseconds) and draft counts."""

    tokens: list[int]
    prompt_tokens: int
    prompt_ms: float
    predicted_ms: float
    draft_tokens: int = 0
    draft_accepted: int = 0
    stop_type: str = ""


def check_binary(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path}: no llama-server executable there; {BUILD_HINT} "
                                f"(it lands in {default_llama_server().parent})")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    """`with LlamaServer(config) as server: server.complete(ids, 128)`; stopped on exit, errors and Ctrl-C."""

    config: LlamaServerConfig
    port: int = 0
    log_path: Path | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)  # kept when something failed: errors point to it

    def start(self) -> None:
        check_binary(self.config.binary)
        self.port = self.port or _free_port()
        fd, log = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as out:
            self._process = subprocess.Popen(self.config.command(self.port), stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # still loading (503) or not listening yet
            time.sleep(0.5)
        raise RuntimeError(f"llama-server did not become ready in {START_TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise RuntimeError(f"llama-server exited (code {code}): {' '.join(self.config.command(self.port))}\n"
                               f"{self.log_tail()}")

    def _settle(self) -> None:
        """Give a server whose connection just broke a moment to finish exiting, so check_alive sees it."""
        if self._process is not None:
            try:
                self._process.wait(timeout=EXIT_SETTLE_S)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace")
        return f"--- last lines of {self.log_path} ---\n{text[-LOG_TAIL_CHARS:]}"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def complete(self, prompt_ids: list[int], max_new_tokens: int) -> LlamaCompletion:
        """Greedy decoding of `max_new_tokens` after `prompt_ids` (no prompt cache, so every request pays its
        prefill, as ours do)."""
        body = {"prompt": [int(i) for i in prompt_ids], "n_predict": int(max_new_tokens), "temperature": 0.0,
                "top_k": 1, "cache_prompt": False, "return_tokens": True, "stream": False}
        request = urllib.request.Request(f"http://{HOST}:{self.port}/completion", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
                reply = json.loads(r.read())
        except (urllib.error.URLError, ConnectionError) as e:
            self._settle()
            self.check_alive()
            raise RuntimeError(f"llama-server request failed: {e}\n{self.log_tail()}") from e
        return _completion(reply)


def _completion(reply: dict) -> LlamaCompletion:
    t = reply.get("timings") or {}
    return LlamaCompletion(tokens=[int(i) for i in reply.get("tokens") or []],
                           prompt_tokens=int(t.get("prompt_n", 0)), prompt_ms=float(t.get("prompt_ms", 0.0)),
                           predicted_ms=float(t.get("predicted_ms", 0.0)), draft_tokens=int(t.get("draft_n", 0)),
                           draft_accepted=int(t.get("draft_n_accepted", 0)), stop_type=str(reply.get("stop_type", "")))


# -------------------------------------------------------------------------------------------------
# bench methods: `llama.cpp` (the target GGUF alone) and `llama.cpp-eagle3` (with our draft as GGUF)
# -------------------------------------------------------------------------------------------------

LLAMA_CPP_METHODS = ("llama.cpp", "llama.cpp-eagle3")


@dataclass
class LlamaCppMethod:
    """A bench method answered by a running llama-server (greedy only; llama.cpp samples with its own RNG)."""

    name: str
    server: LlamaServer
    draft_tokens: int = 0  # llama.cpp's draft acceptance over every run so far (its timings.draft_n*)
    draft_accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else 0.0

    def run(self, ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> MethodRun:
        from eaglespec.decoding import GenerationStats
        from eaglespec.evaluation.methods import MethodRun

        if not sampling.greedy:
            raise ValueError(f"{self.name}: llama.cpp methods run greedy only (its sampler draws from its own "
                             "random numbers, so outputs could not be compared); use --temperature 0")
        c = self.server.complete(ids, max_new_tokens)
        # llama.cpp reports totals only: prefill gives the first token and each verification step gives its
        # accepted draft tokens plus one, so the target forwards are new tokens - accepted draft tokens.
        stats = GenerationStats(new_tokens=len(c.tokens), target_forwards=max(len(c.tokens) - c.draft_accepted, 1),
                                finish_reason="stop" if c.stop_type in ("eos", "word") else "length")
        self.draft_tokens += c.draft_tokens
        self.draft_accepted += c.draft_accepted
        return MethodRun(c.tokens, stats, split_known=False)
