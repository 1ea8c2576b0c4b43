"""A llama.cpp `llama-server` on loopback, started for one run and always stopped, and greedy completions from it
given token ids (so its prompts are exactly ours), with llama.cpp's own timings and draft acceptance.

The pinned build is made by tests/interop/build_envs.sh (`llama.cpp`); its binaries land in
$EAGLESPEC_INTEROP_HOME/llama.cpp/build/bin (default ~/.cache/eaglespec-interop).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eaglespec.decoding import GenerationStats
from eaglespec.evaluation.exactness import first_difference
from eaglespec.evaluation.gguf_files import gguf_vocabulary
from eaglespec.evaluation.methods import DFLASH, MethodRun, Sampling, llama_cpp_variant

if TYPE_CHECKING:
    from contextlib import ExitStack

HOST = "127.0.0.1"  # loopback only: the server is a private helper of this process
BUILD_HINT = "build the pinned llama.cpp with `tests/interop/build_envs.sh llama.cpp`"
START_TIMEOUT_S = 300.0  # model load + warm-up on a slow, shared 2-core CPU
REQUEST_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0
EXIT_SETTLE_S = 2.0
LOG_TAIL_CHARS = 3000
DEFAULT_DRAFT_N_MAX = 3  # llama.cpp's own default chain length
EAGLE3_SPEC_TYPE, DFLASH_SPEC_TYPE = "draft-eagle3", "draft-dflash"  # --spec-type of our two draft GGUFs
DEFAULT_DRAFT_P_MIN = 0.0  # llama.cpp's default: draft the whole chain whatever the draft's confidence
# llama.cpp's own default (-fa auto: on for this CPU). "off" makes its output with a draft identical to its output
# without one: its CPU flash attention computes one query row (a plain decode) otherwise than several (the
# verification of a drafted chain), so their F32 logits differ in the last bits and near-ties flip (measured:
# 1 of 20 MT-bench answers with "auto", 0 with "off"; tests/interop/test_llamacpp.py)
DEFAULT_FLASH_ATTN = "auto"
FLASH_ATTN_CHOICES = ("auto", "on", "off")
TRACE_VERBOSITY = "4"  # -lv 4: llama.cpp logs its drafter's cumulative call counts and times at this level
STEPS_METRIC = "llamacpp:spec_decode_num_drafts_total"  # verification steps (`--metrics`)
PER_POS_METRIC = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"  # {position="i"}: steps accepting > i
# common_speculative_print_stats, logged when a request ends: "#calls(b,g,a) = 1 37 37, ... dur(b,g,a) = b, g, a ms"
DRAFT_STATS = re.compile(r"statistics\s+draft-(?:eagle3|dflash): #calls\(b,g,a\) =\s*\d+\s+(\d+)\s+\d+.*"
                         r"dur\(b,g,a\) = [\d.]+, ([\d.]+), [\d.]+ ms")


def interop_home() -> Path:
    return Path(os.environ.get("EAGLESPEC_INTEROP_HOME", Path.home() / ".cache" / "eaglespec-interop"))


def default_llama_server() -> Path:
    return interop_home() / "llama.cpp" / "build" / "bin" / "llama-server"


@dataclass(frozen=True)
class LlamaServerConfig:
    """How to start one llama-server: the target GGUF, optionally a draft GGUF (EAGLE-3, or DFlash with
    spec_type "draft-dflash") and its chain flags."""

    binary: Path
    model: Path
    draft: Path | None = None
    spec_type: str = EAGLE3_SPEC_TYPE
    draft_n_max: int = DEFAULT_DRAFT_N_MAX
    draft_p_min: float = DEFAULT_DRAFT_P_MIN
    threads: int = max(1, os.cpu_count() or 1)
    context: int = 4096
    flash_attn: str = DEFAULT_FLASH_ATTN
    extra_args: tuple[str, ...] = ()
    trace_steps: bool = False  # LLAMA_TRACE=1: the log gets one "task N | accepted a/d draft tokens" line per step

    def environment(self) -> dict[str, str]:
        return {**os.environ, "LLAMA_TRACE": "1"} if self.trace_steps else dict(os.environ)

    def command(self, port: int) -> list[str]:
        cmd = [str(self.binary), "-m", str(self.model), "--host", HOST, "--port", str(port), "-t", str(self.threads),
               "-c", str(self.context), "-np", "1", "-fa", self.flash_attn, "--no-webui", "--metrics", *self.extra_args]
        if self.draft is not None:
            cmd += ["-md", str(self.draft), "--spec-type", self.spec_type, "--spec-draft-n-max", str(self.draft_n_max),
                    "--spec-draft-p-min", str(self.draft_p_min), "-td", str(self.threads), "-lv", TRACE_VERBOSITY]
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
    spec: SpecCounters | None = None  # verification steps and accepted tokens by draft position (with a draft)


@dataclass(frozen=True)
class SpecCounters:
    """llama-server's speculative counters (`/metrics`): verification steps and, per draft position i, the steps
    that accepted more than i draft tokens. Cumulative over the server's life; `minus` gives one request's."""

    steps: int = 0
    accepted_per_pos: tuple[int, ...] = ()

    def minus(self, before: SpecCounters) -> SpecCounters:
        old = before.accepted_per_pos + (0,) * (len(self.accepted_per_pos) - len(before.accepted_per_pos))
        return SpecCounters(self.steps - before.steps, tuple(a - b for a, b in zip(self.accepted_per_pos, old)))

    def accept_length_counts(self) -> list[int]:
        """[k]: how many steps accepted exactly k draft tokens."""
        reached = [self.steps, *self.accepted_per_pos, 0]
        return [reached[k] - reached[k + 1] for k in range(len(reached) - 1)]


def parse_spec_counters(text: str) -> SpecCounters:
    """The speculative counters in a Prometheus text page from llama-server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    steps, per_pos = 0, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == STEPS_METRIC:
                steps = int(sample.value)
            elif sample.name == PER_POS_METRIC:
                per_pos[int(sample.labels["position"])] = int(sample.value)
    return SpecCounters(steps, tuple(per_pos.get(i, 0) for i in range(max(per_pos, default=-1) + 1)))


@dataclass(frozen=True)
class DraftTiming:
    """llama.cpp's drafter over the server's life so far: draft calls (one per drafted chain) and their time."""

    calls: int
    ms: float

    @property
    def ms_per_call(self) -> float:
        return self.ms / self.calls if self.calls else 0.0


def parse_draft_timing(log: str) -> DraftTiming | None:
    """The last drafter statistics line in a llama-server log written at -lv 4 (None: none yet)."""
    found = DRAFT_STATS.findall(log)
    return DraftTiming(int(found[-1][0]), float(found[-1][1])) if found else None


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
                                             stdin=subprocess.DEVNULL, env=self.config.environment())
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

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        text = self.log_text()
        return f"--- last lines of {self.log_path} ---\n{text[-LOG_TAIL_CHARS:]}" if text else "(no log)"

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
        prefill, as ours do); with a draft, the request's own speculative counters too (/metrics before and after:
        one slot, so nothing else moves them)."""
        return self._greedy("/completion", {"prompt": [int(i) for i in prompt_ids]}, max_new_tokens)

    def infill(self, prefix: str, suffix: str, max_new_tokens: int) -> LlamaCompletion:
        """Greedy fill-in-the-middle through llama-server's /infill, as editors call it (llama.vim, llama.vscode):
        llama.cpp tokenizes prefix and suffix and lays them out with the model's FIM tokens itself."""
        return self._greedy("/infill", {"input_prefix": prefix, "input_suffix": suffix}, max_new_tokens)

    def _greedy(self, path: str, inputs: dict, max_new_tokens: int) -> LlamaCompletion:
        body = {**inputs, "n_predict": int(max_new_tokens), "temperature": 0.0, "top_k": 1, "cache_prompt": False,
                "return_tokens": True, "stream": False}
        before = self.spec_counters() if self.config.draft is not None else None
        reply = json.loads(self._request(path, json.dumps(body).encode()))
        spec = None if before is None else self.spec_counters().minus(before)
        return _completion(reply, spec)

    def spec_counters(self) -> SpecCounters:
        return parse_spec_counters(self._request("/metrics").decode())

    def draft_timing(self) -> DraftTiming | None:
        """The drafter's calls and time so far, from the server's log (None before the first drafted request)."""
        return parse_draft_timing(self.log_text())

    def _request(self, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"http://{HOST}:{self.port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
                return r.read()
        except (urllib.error.URLError, ConnectionError) as e:
            self._settle()
            self.check_alive()
            raise RuntimeError(f"llama-server request {path} failed: {e}\n{self.log_tail()}") from e


def _completion(reply: dict, spec: SpecCounters | None) -> LlamaCompletion:
    t = reply.get("timings") or {}
    return LlamaCompletion(tokens=[int(i) for i in reply.get("tokens") or []],
                           prompt_tokens=int(t.get("prompt_n", 0)), prompt_ms=float(t.get("prompt_ms", 0.0)),
                           predicted_ms=float(t.get("predicted_ms", 0.0)), draft_tokens=int(t.get("draft_n", 0)),
                           draft_accepted=int(t.get("draft_n_accepted", 0)), stop_type=str(reply.get("stop_type", "")),
                           spec=spec)


# -------------------------------------------------------------------------------------------------
# bench methods: `llama.cpp` (the target GGUF alone), `llama.cpp-eagle3` / `llama.cpp-dflash` (with our draft as GGUF)
# -------------------------------------------------------------------------------------------------

CONVERT_HINT = ("convert the target with llama.cpp's convert_hf_to_gguf.py (in the pinned build's src/; "
                "see the README section \"Running your draft in llama.cpp\")")


@dataclass(frozen=True)
class LlamaCppOptions:
    """What `bench`'s llama.cpp methods run: the target GGUF, our draft as GGUF, the server and its chain flags."""

    target_gguf: str | None = None
    draft_ggufs: dict[str, str] = field(default_factory=dict)  # our drafts as GGUF, by kind (methods.EAGLE_KIND / DFLASH)
    server: str | None = None  # llama-server binary (None: the pinned build's)
    threads: int | None = None  # None: every core
    draft_n_max: int = DEFAULT_DRAFT_N_MAX
    draft_p_min: float = DEFAULT_DRAFT_P_MIN
    flash_attn: str = DEFAULT_FLASH_ATTN  # the same for every llama.cpp method, so they are compared on one kernel


@dataclass
class LlamaCppMethod:
    """A bench method answered by a running llama-server (greedy only; llama.cpp samples with its own RNG).

    Its stats are llama.cpp's own: target forwards = new tokens - accepted draft tokens (the prefill gives the first
    token, each forward after it one token plus what it accepts) and, with a draft, acceptance by draft position
    from the server's counters (a step that drafted fewer than n-max tokens, at the end of an answer, counts as
    drafting n-max)."""

    name: str
    server: LlamaServer
    draft_tokens: int = 0  # over every run so far, the warm-up included
    draft_accepted: int = 0
    predicted_ms: float = 0.0  # llama.cpp's generation time after the prefill
    decode_forwards: int = 0  # target forwards after the prefill

    @property
    def acceptance(self) -> float:
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else 0.0

    def run(self, ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> MethodRun:
        if not sampling.greedy:
            raise ValueError(f"{self.name}: llama.cpp methods run greedy only (its sampler draws from its own "
                             "random numbers, so outputs could not be compared); use --temperature 0")
        c = self.server.complete(ids, max_new_tokens)
        stats = completion_stats(c, self.server.config.draft_n_max)
        self.draft_tokens += c.draft_tokens
        self.draft_accepted += c.draft_accepted
        self.predicted_ms += c.predicted_ms
        self.decode_forwards += max(stats.target_forwards - 1, 0)
        return MethodRun(c.tokens, stats, split_known=False)

    def engine_figures(self) -> dict:
        """Where llama.cpp's time went (over every run, the warm-up included): ms per target forward after the
        prefill and, with the draft, the drafter's calls and ms per call (from the server's log) and acceptance."""
        figures = {"command": " ".join(self.server.config.command(self.server.port)),
                   "decode_ms_per_forward": self.predicted_ms / self.decode_forwards if self.decode_forwards else None}
        if self.server.config.draft is not None:
            timing = self.server.draft_timing()
            figures.update(draft_tokens=self.draft_tokens, draft_accepted=self.draft_accepted,
                           acceptance=self.acceptance, draft_calls=timing.calls if timing else None,
                           draft_ms_per_call=timing.ms_per_call if timing else None)
        return figures


def draft_gguf(name: str, variant, ggufs: dict[str, str]) -> Path:
    """The draft GGUF of `variant`'s kind, checked to exist."""
    if variant.draft_kind not in ggufs:
        raise ValueError(f"{name} needs our {variant.draft_kind} draft as GGUF: --gguf-draft FILE "
                         "(`eaglespec export --format gguf`), or --draft DIR to export it")
    path = Path(ggufs[variant.draft_kind])
    if not path.is_file():
        raise FileNotFoundError(f"--gguf-draft {path}: no such file")
    return path


def completion_stats(c: LlamaCompletion, chain: int) -> GenerationStats:
    stats = GenerationStats(new_tokens=len(c.tokens), target_forwards=max(len(c.tokens) - c.draft_accepted, 1),
                            finish_reason="stop" if c.stop_type in ("eos", "word") else "length")
    if c.spec is not None:
        for accepted, steps in enumerate(c.spec.accept_length_counts()):
            for _ in range(steps):
                stats.record_step(accepted, chain)
    return stats


def start_llama_cpp_methods(names: list[str], options: LlamaCppOptions, vocabulary: list[str], stack: ExitStack
                            ) -> dict[str, LlamaCppMethod]:
    """A running server per llama.cpp method named (stopped when `stack` closes), after checking the inputs:
    the target GGUF is given and its vocabulary is `vocabulary` (our tokenizer's tokens by id: prompts are sent
    as token ids), and each method with our draft has a draft GGUF of its kind."""
    wanted = {n: v for n in names if (v := llama_cpp_variant(n)) is not None}
    if not wanted:
        return {}
    for module, extra in (("gguf", "gguf"), ("prometheus_client", "serve")):  # the target's vocabulary; /metrics
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"the llama.cpp methods need {module}: pip install 'eaglespec[{extra}]'")
    binary = check_binary(options.server or default_llama_server())
    target = check_target_gguf(options.target_gguf, vocabulary)
    drafts = {name: draft_gguf(name, v, options.draft_ggufs) for name, v in wanted.items() if v.drafted}
    methods = {}
    for name, variant in wanted.items():
        draft = drafts.get(name)
        spec_type = DFLASH_SPEC_TYPE if variant.draft_kind == DFLASH else EAGLE3_SPEC_TYPE
        config = LlamaServerConfig(binary, target, draft=draft, spec_type=spec_type,
                                   draft_n_max=variant.n_max or options.draft_n_max,
                                   draft_p_min=options.draft_p_min if variant.p_min is None else variant.p_min,
                                   threads=options.threads or LlamaServerConfig.threads,
                                   flash_attn=options.flash_attn)
        methods[name] = LlamaCppMethod(name, stack.enter_context(LlamaServer(config)))
    return methods


def target_gguf_path(path: str | None) -> Path:
    """--gguf-target, given and present."""
    if not path:
        raise ValueError(f"the llama.cpp methods need the target as GGUF: --gguf-target FILE ({CONVERT_HINT})")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--gguf-target {path}: no such file ({CONVERT_HINT})")
    return Path(path)


def check_target_gguf(path: str | None, vocabulary: list[str]) -> Path:
    """The target GGUF exists, is a GGUF, and holds our tokenizer's vocabulary in our ids (first)."""
    path = target_gguf_path(path)
    theirs = gguf_vocabulary(path)
    if theirs[: len(vocabulary)] != vocabulary:  # a converter may pad the vocabulary up to the embedding's rows
        first = first_difference(theirs[: len(vocabulary)], vocabulary)
        raise ValueError(f"--gguf-target {path}: its vocabulary differs from the target's tokenizer ({len(theirs)} vs "
                         f"{len(vocabulary)} tokens; first difference at id {first}); bench sends token ids, so both "
                         "must be the same model")
    return path
