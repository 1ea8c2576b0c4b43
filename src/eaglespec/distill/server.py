"""The server engine: the same prompts sent to an OpenAI-compatible server (vLLM, SGLang, llama-server,
`eaglespec serve`), `concurrency` requests in flight. `/v1/completions` takes the prompt as token ids, so the
server sees exactly the tokens the local target would (the chat template rendered here); with api="chat" the chat
turns go to `/v1/chat/completions` as messages (the server's own template) and the rest to completions. Each record
says which engine and model answered (`generated_by`, from the server's `/v1/models` card)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from eaglespec.decoding import GenerationOptions
from eaglespec.distill.jobs import Completion, JobPrompt
from eaglespec.distill.local import prompt_options

SERVER_APIS = ("completions", "chat")
REQUEST_TIMEOUT_SECONDS = 3600.0  # one completion; a busy server may queue a request for long
BUSY_STATUSES = (429, 503)  # "too many requests" / "unavailable": the server is full, not wrong; asked again
BUSY_RETRIES = 8  # then the run stops (and resumes when rerun)
BUSY_FIRST_WAIT_SECONDS = 0.5  # doubled after each busy answer: 0.5 s .. 64 s, about two minutes in all


@dataclass(frozen=True)
class ServerConfig:
    url: str  # base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)
    model: str | None = None  # the `model` to ask for; None: the server's only (or first) model
    api: str = "completions"  # completions | chat (see the module docstring)
    concurrency: int = 8  # requests in flight
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.api not in SERVER_APIS:
            raise ValueError(f"--server-api: expected one of {SERVER_APIS}, got {self.api!r}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency: expected >= 1, got {self.concurrency}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--server: expected an http:// or https:// URL, got {self.url!r}")

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"


def _http(config: ServerConfig, path: str, body: dict | None = None) -> dict:
    """One JSON request -> the JSON answer, asked again while the server answers busy (429/503)."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return _http_once(config, path, body)
        except urllib.error.HTTPError as e:
            if e.code not in BUSY_STATUSES or attempt == BUSY_RETRIES:
                raise _http_error(config, path, e) from e
        time.sleep(BUSY_FIRST_WAIT_SECONDS * 2**attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _http_error(config: ServerConfig, path: str, e: urllib.error.HTTPError) -> ValueError:
    return ValueError(f"{config.base}{path}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}")


def _http_once(config: ServerConfig, path: str, body: dict | None) -> dict:
    """One JSON request; HTTP errors are raised as they are, connection errors name the URL."""
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(config.base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"{config.base}{path}: cannot reach the server ({e})") from e


def model_card(config: ServerConfig) -> dict:
    """The server's card of the model to ask for (`/v1/models`): the one named, or the only/first one."""
    cards = _http(config, "/models").get("data") or []
    if config.model is None and cards:
        return cards[0]
    for card in cards:
        if card.get("id") == config.model:
            return card
    names = [c.get("id") for c in cards]
    if config.model is None:
        raise ValueError(f"{config.base}/models lists no model; name one with --server-model")
    raise ValueError(f"--server-model {config.model!r}: the server has {names}")


def request_body(model: str, prompt: JobPrompt, options: GenerationOptions, api: str) -> tuple[str, dict]:
    """-> (path, JSON body) of one completion request."""
    body: dict[str, Any] = {"model": model, "max_tokens": options.max_new_tokens, "temperature": options.temperature,
                            "top_p": options.top_p, "seed": options.seed}
    if options.top_k:
        body["top_k"] = options.top_k  # an extension vLLM, llama-server and eaglespec serve take
    if api == "chat" and prompt.messages is not None:
        return "/chat/completions", {**body, "messages": prompt.messages}
    return "/completions", {**body, "prompt": prompt.token_ids}


def parse_answer(answer: dict, path: str) -> Completion:
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"] if path == "/chat/completions" else choice["text"]
        return Completion(text or "", None, hit_limit=choice.get("finish_reason") == "length")
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: the server's answer has no choices[0] text ({e}): {str(answer)[:300]}") from e


class ServerEngine:
    """`concurrency` completion requests in flight (threads); `collect` waits for at least one to finish."""

    def __init__(self, config: ServerConfig, options: GenerationOptions):
        self.config, self.options, self.capacity = config, options, config.concurrency
        card = model_card(config)
        self.model = str(card["id"])
        self.generated_by = {"engine": str(card.get("owned_by", "unknown")), "model": self.model,
                             "server": config.base}
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="regenerate-server")
        self.pending: dict[Future, tuple[Any, str]] = {}  # request -> (caller's key, record id)

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, key: Any, prompt: JobPrompt, record_id: str) -> None:
        options = prompt_options(self.options, prompt, stop_ids=[])  # the server stops at its model's own EOS
        path, body = request_body(self.model, prompt, options, self.config.api)
        self.pending[self.pool.submit(self._complete, path, body)] = (key, record_id)

    def _complete(self, path: str, body: dict) -> Completion:
        return parse_answer(_http(self.config, path, body), path)

    def collect(self) -> list[tuple[Any, Completion]]:
        done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            key, record_id = self.pending.pop(future)
            try:
                out.append((key, future.result()))
            except ValueError as e:
                raise ValueError(f"record {record_id!r}: {e}") from e
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
