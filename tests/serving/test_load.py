"""Acceptance 3: a bounded load test on loopback (50 concurrent streams, 10 clients leave early, the queue
overflows on purpose), plus: a disconnect frees its slot, the per-request timeout, fair round-robin."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest
from serving_helpers import MODEL, assert_error, http_request, metric_value, read_sse

PROMPTS = ["Once upon a time", "The sun was shining and", "Tim found a shiny rock.", "Sam was sad."]
STAYER_TOKENS = 16
LEAVER_TOKENS = 400  # far more than a leaver waits for: its generation cannot finish before it leaves
LEAVERS, STAYERS = 10, 40
MAX_CONCURRENCY, QUEUE_SIZE = 4, 26  # room for 30 of the 50: the stayers' burst overflows


def _open_stream(url: str, prompt: str, max_tokens: int, timeout: float = 60):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _first_tokens(response) -> bool:
    """Read events until one carries tokens."""
    for line in response:
        if line.startswith(b"data: {") and json.loads(line[6:]).get("eaglespec", {}).get("token_ids"):
            return True
    return False


def _leave(conn) -> None:
    """Drop the connection like a client that goes away (no more reads, socket closed)."""
    conn.sock.shutdown(2)
    conn.close()


def _wait_idle(url: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        _, health = http_request(url, "GET", "/health")
        if health["active"] == 0 and health["waiting"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _stayer(url, prompt, barrier, results, index):
    barrier.wait()
    conn, response = _open_stream(url, prompt, STAYER_TOKENS)
    try:
        if response.status != 200:
            results[index] = (response.status, json.loads(response.read()), None)
            return
        events = read_sse(response)
        results[index] = (200, events, prompt)
    finally:
        conn.close()


def _leaver(url, prompt, admitted, results, index):
    conn, response = _open_stream(url, prompt, LEAVER_TOKENS)
    results[index] = response.status
    admitted.release()
    if response.status == 200 and _first_tokens(response):
        results[index] = "left"
    _leave(conn)


@pytest.fixture(scope="module")
def references(generator) -> dict[str, str]:
    """Single-request greedy outputs, computed before any server decodes."""
    return {p: generator.generate(p, max_new_tokens=STAYER_TOKENS).text for p in PROMPTS}


@pytest.mark.parametrize("max_batch_size", [1, MAX_CONCURRENCY], ids=["round-robin", "batched"])
def test_fifty_streams_with_leavers_and_overflow(start_server, references, max_batch_size):
    url = start_server(max_concurrency=MAX_CONCURRENCY, queue_size=QUEUE_SIZE, max_batch_size=max_batch_size)
    started = time.monotonic()
    leaver_results: list = [None] * LEAVERS
    admitted = threading.Semaphore(0)
    leavers = [threading.Thread(target=_leaver, args=(url, PROMPTS[i % 4], admitted, leaver_results, i))
               for i in range(LEAVERS)]
    for t in leavers:
        t.start()
    for _ in range(LEAVERS):  # every leaver holds a slot or a queue place before the burst
        assert admitted.acquire(timeout=30)
    results: list = [None] * STAYERS
    barrier = threading.Barrier(STAYERS)
    stayers = [threading.Thread(target=_stayer, args=(url, PROMPTS[i % 4], barrier, results, i))
               for i in range(STAYERS)]
    for t in [*stayers]:
        t.start()
    for t in [*leavers, *stayers]:
        t.join(60)
    assert not any(t.is_alive() for t in [*leavers, *stayers])

    assert leaver_results == ["left"] * LEAVERS
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}, statuses
    completed = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    print(f"{len(completed)} completed, {len(rejected)} rejected with 429, {LEAVERS} left early")
    assert rejected, "the burst should overflow the queue"
    assert len(completed) >= QUEUE_SIZE + MAX_CONCURRENCY - LEAVERS  # at least the places the leavers left free
    for _, events, prompt in completed:
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert "".join(c["choices"][0]["text"] for c in chunks) == references[prompt]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    for _, body, _ in rejected:
        assert body["error"]["code"] == "queue_full" and body["error"]["type"] == "rate_limit_error"

    health = _wait_idle(url)
    assert health == {"status": "ok", "waiting": 0, "active": 0}
    _, metrics = http_request(url, "GET", "/metrics")
    count = lambda name, **labels: metric_value(metrics, name, labels)  # noqa: E731
    n_ok = len(completed) + LEAVERS
    assert count("eaglespec_requests_total", endpoint="/v1/completions", status="200") == n_ok
    assert count("eaglespec_requests_total", endpoint="/v1/completions", status="429") == len(rejected)
    assert count("eaglespec_generations_total", outcome="cancelled") == LEAVERS
    assert count("eaglespec_generations_total", outcome="length") == len(completed)
    assert count("eaglespec_tau_count") == len(completed)
    assert count("eaglespec_time_to_first_token_seconds_count") == n_ok
    assert count("eaglespec_request_latency_seconds_count") == n_ok
    tokens = count("eaglespec_generation_tokens_total")
    assert len(completed) * STAYER_TOKENS + LEAVERS <= tokens < len(completed) * STAYER_TOKENS + LEAVERS * LEAVER_TOKENS
    assert count("eaglespec_queue_depth") == 0 and count("eaglespec_active_streams") == 0
    for status in ("500", "502", "503", "504"):
        assert count("eaglespec_requests_total", status=status) == 0
    assert http_request(url, "POST", "/v1/completions", {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 3})[0] == 200
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("max_batch_size", [1, 2], ids=["round-robin", "batched"])
def test_a_disconnect_frees_its_slot(start_server, max_batch_size):
    url = start_server(max_concurrency=1, queue_size=0, max_batch_size=max_batch_size)
    conn, response = _open_stream(url, PROMPTS[0], LEAVER_TOKENS)
    assert response.status == 200 and _first_tokens(response)
    busy = {"model": MODEL, "prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0}
    error = assert_error(http_request(url, "POST", "/v1/completions", busy), 429, None)
    assert error["code"] == "queue_full"
    _leave(conn)
    deadline = time.monotonic() + 10
    while (status := http_request(url, "POST", "/v1/completions", busy)[0]) == 429 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status == 200
    _, metrics = http_request(url, "GET", "/metrics")
    assert metric_value(metrics, "eaglespec_generations_total", {"outcome": "cancelled"}) == 1
    tokens = metric_value(metrics, "eaglespec_generation_tokens_total")
    assert tokens < LEAVER_TOKENS  # it stopped soon after the client left


@pytest.mark.parametrize("max_batch_size", [1, 2], ids=["round-robin", "batched"])
def test_a_non_streaming_client_that_leaves_is_cancelled(start_server, max_batch_size):
    url = start_server(max_concurrency=1, queue_size=0, max_batch_size=max_batch_size)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": LEAVER_TOKENS, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    while http_request(url, "GET", "/health")[1]["active"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    _leave(conn)
    assert _wait_idle(url)["active"] == 0
    _, metrics = http_request(url, "GET", "/metrics")
    assert metric_value(metrics, "eaglespec_generations_total", {"outcome": "cancelled"}) == 1
    assert metric_value(metrics, "eaglespec_generation_tokens_total") < LEAVER_TOKENS


@pytest.mark.parametrize("max_batch_size", [1, 4], ids=["round-robin", "batched"])
def test_request_timeout(start_server, max_batch_size):
    url = start_server(request_timeout=0.2, max_batch_size=max_batch_size)
    slow = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 450, "temperature": 0}  # ~450 forwards: > 0.2 s
    error = assert_error(http_request(url, "POST", "/v1/completions", slow), 504, None)
    assert error["type"] == "timeout_error" and "timed out" in error["message"]
    conn, response = _open_stream(url, PROMPTS[0], 450)
    events = read_sse(response)
    conn.close()
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    quick = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0}
    assert http_request(url, "POST", "/v1/completions", quick)[0] == 200
    _, metrics = http_request(url, "GET", "/metrics")
    assert metric_value(metrics, "eaglespec_generations_total", {"outcome": "timeout"}) == 2


@pytest.mark.parametrize("max_batch_size", [1, 2], ids=["round-robin", "batched"])
def test_round_robin_is_fair(start_server, generator, max_batch_size):
    """A short request sent while a long one streams finishes long before it: steps alternate (or are shared)."""
    url = start_server(max_concurrency=2, queue_size=0, max_batch_size=max_batch_size)
    conn, response = _open_stream(url, PROMPTS[0], 150)
    assert response.status == 200 and _first_tokens(response)
    short = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0}
    status, body = http_request(url, "POST", "/v1/completions", short)
    assert status == 200
    assert body["choices"][0]["text"] == generator.generate(PROMPTS[2], max_new_tokens=8).text
    _, health = http_request(url, "GET", "/health")
    assert health["active"] == 1  # the long stream is still going
    events = read_sse(response)
    conn.close()
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_a_failing_generation_is_a_500_error_object_and_the_worker_lives_on(generator):
    """A bug inside decoding (simulated) answers 500 with an error object, counted, and later requests still work."""
    import copy

    from eaglespec.serving import ServeConfig, ServerThread

    faulty = copy.copy(generator)

    def stream(input_ids, options, **kwargs):
        if options.max_new_tokens == 13:
            raise RuntimeError("simulated decoding bug")
        return generator.stream(input_ids, options=options, **kwargs)

    class Tokenizer:  # raises inside the request handler, outside any generation
        def __call__(self, text, **kwargs):
            if text == "explode":
                raise RuntimeError("simulated handler bug")
            return generator.tokenizer(text, **kwargs)

        def __getattr__(self, name):
            return getattr(generator.tokenizer, name)

    faulty.stream, faulty.tokenizer = stream, Tokenizer()
    with ServerThread(faulty, ServeConfig(port=0, served_model_name=MODEL)) as url:
        bad = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 13, "temperature": 0}
        error = assert_error(http_request(url, "POST", "/v1/completions", bad), 500, None)
        assert error["type"] == "server_error" and "simulated decoding bug" in error["message"]
        conn, response = _open_stream(url, PROMPTS[0], 13)
        events = read_sse(response)
        conn.close()
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal"
        good = {**bad, "max_tokens": 5}
        status, body = http_request(url, "POST", "/v1/completions", good)
        assert status == 200 and body["choices"][0]["text"] == generator.generate(PROMPTS[0], max_new_tokens=5).text
        _, metrics = http_request(url, "GET", "/metrics")
        assert metric_value(metrics, "eaglespec_requests_total", {"status": "500"}) == 1
        error = assert_error(http_request(url, "POST", "/v1/completions", {**good, "prompt": "explode"}), 500, None)
        assert error["type"] == "server_error"
        _, metrics = http_request(url, "GET", "/metrics")
        assert metric_value(metrics, "eaglespec_requests_total", {"status": "500"}) == 2
        assert http_request(url, "POST", "/v1/completions", good)[0] == 200
        assert metric_value(metrics, "eaglespec_generations_total", {"outcome": "internal"}) == 2


def test_a_client_that_leaves_while_queued_frees_its_queue_place(start_server):
    url = start_server(max_concurrency=1, queue_size=1)
    active_conn, active = _open_stream(url, PROMPTS[0], LEAVER_TOKENS)
    assert active.status == 200 and _first_tokens(active)
    queued_conn, queued = _open_stream(url, PROMPTS[1], 8)
    assert queued.status == 200 and http_request(url, "GET", "/health")[1]["waiting"] == 1
    _leave(queued_conn)
    deadline = time.monotonic() + 10
    while http_request(url, "GET", "/health")[1]["waiting"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert http_request(url, "GET", "/health")[1] == {"status": "ok", "waiting": 0, "active": 1}
    _leave(active_conn)
    assert _wait_idle(url)["active"] == 0
    _, metrics = http_request(url, "GET", "/metrics")
    assert metric_value(metrics, "eaglespec_generations_total", {"outcome": "cancelled"}) == 2
    assert metric_value(metrics, "eaglespec_time_to_first_token_seconds_count") == 1  # the queued one never started


def test_batched_serving_equals_single_requests_with_sampling_and_stops(start_server, generator):
    """Continuous batching: concurrent greedy, seeded-sampling and stop-string requests joining at different
    steps each get exactly what they get alone."""
    url = start_server(max_concurrency=6, queue_size=10, max_batch_size=6)
    cases = []
    for i, prompt in enumerate(PROMPTS * 2):
        options = {"max_tokens": 8 + 4 * i}
        if i % 3 == 1:
            options.update(temperature=0.8, seed=100 + i)
        if i % 3 == 2:
            options["stop"] = generator.generate(prompt, max_new_tokens=8 + 4 * i).text.split(" ")[2]
        cases.append((prompt, options))
    results: list = [None] * len(cases)

    def run(i):
        prompt, options = cases[i]
        body = {"model": MODEL, "prompt": prompt, "temperature": 0, **options}
        results[i] = http_request(url, "POST", "/v1/completions", body)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
        time.sleep(0.01)  # arrivals spread over a few steps
    for t in threads:
        t.join(60)
    for (prompt, options), (status, body) in zip(cases, results):
        assert status == 200, body
        kwargs = {"temperature": options.get("temperature", 0), "seed": options.get("seed")}
        expected = generator.generate(prompt, max_new_tokens=options["max_tokens"], **kwargs).text
        if "stop" in options:
            expected = expected[: expected.index(options["stop"])]
        assert body["choices"][0]["text"] == expected, (prompt, options)
    _, models = http_request(url, "GET", "/v1/models")
    assert models["data"][0]["eaglespec"]["max_batch_size"] == 6


def test_a_failing_batch_step_fails_its_rows_and_a_fresh_batch_serves_on(generator):
    import copy

    from eaglespec.serving import ServeConfig, ServerThread

    class FaultyBatch:  # a RunningBatch whose next step raises once a request with max_new_tokens=13 joined
        def __init__(self, **kwargs):
            self.batch, self.armed = generator.running_batch(**kwargs), False

        def add(self, prompt, options):
            self.armed |= options.max_new_tokens == 13
            return self.batch.add(prompt, options=options)

        def step(self):
            if self.armed:
                raise RuntimeError("simulated batch bug")
            return self.batch.step()

        def cancel(self, request_id):
            return self.batch.cancel(request_id)

    faulty = copy.copy(generator)
    faulty.running_batch = lambda **kwargs: FaultyBatch(**kwargs)
    with ServerThread(faulty, ServeConfig(port=0, served_model_name=MODEL, max_batch_size=4)) as url:
        bad = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 13, "temperature": 0}
        error = assert_error(http_request(url, "POST", "/v1/completions", bad), 500, None)
        assert "simulated batch bug" in error["message"]
        good = {**bad, "max_tokens": 6}
        status, body = http_request(url, "POST", "/v1/completions", good)
        assert status == 200 and body["choices"][0]["text"] == generator.generate(PROMPTS[0], max_new_tokens=6).text
