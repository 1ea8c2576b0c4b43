"""Acceptance 2: bad requests get the right 4xx with an OpenAI error object, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import pytest
from serving_helpers import MODEL, assert_error, http_request, metric_value

GOOD = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
LIMIT = 64  # the test server's --max-new-tokens-limit
BODY_LIMIT = 4096  # the test server's request body limit in bytes


@pytest.fixture(scope="module")
def small_server(start_server) -> str:
    return start_server(max_new_tokens_limit=LIMIT, max_request_bytes=BODY_LIMIT)


def post(url, body, path="/v1/completions", headers=None):
    return http_request(url, "POST", path, body, headers)


@pytest.mark.parametrize("body, param", [
    ({**GOOD, "max_tokens": "ten"}, "max_tokens"),
    ({**GOOD, "max_tokens": 2.5}, "max_tokens"),
    ({**GOOD, "temperature": "hot"}, "temperature"),
    ({**GOOD, "temperature": -1}, "temperature"),
    ({**GOOD, "top_p": 0}, "top_p"),
    ({**GOOD, "prompt": 5}, "prompt"),
    ({**GOOD, "prompt": [1, "a"]}, "prompt"),
    ({**GOOD, "stream": "yes"}, "stream"),
    ({**GOOD, "stop": 3}, "stop"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**GOOD, "stop": [""]}, "stop"),
    ({**GOOD, "seed": "x"}, "seed"),
    ({**GOOD, "n": 2}, "n"),
    ({**GOOD, "echo": True}, "echo"),
    ({**GOOD, "logprobs": 3}, "logprobs"),
    ({**GOOD, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ({**GOOD, "max_tokens": -5}, "max_tokens"),
    ({**GOOD, "max_tokens": 10**12}, "max_tokens"),
    ({**GOOD, "max_tokens": LIMIT + 1}, "max_tokens"),
    ({**GOOD, "unknown_field": 1}, "unknown_field"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt"),
    ({k: v for k, v in GOOD.items() if k != "model"}, "model"),
    ({**GOOD, "prompt": ""}, "prompt"),
    ({**GOOD, "prompt": []}, "prompt"),
    ({**GOOD, "prompt": ["a", "b"]}, "prompt"),
    ({**GOOD, "prompt": [1, 99999]}, "prompt"),
    ({**GOOD, "prompt": [1, -3]}, "prompt"),
])
def test_completion_validation_is_400(small_server, body, param):
    error = assert_error(post(small_server, body), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages.0.content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 3},
     "max_completion_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
])
def test_chat_validation_is_400(small_server, body, param):
    assert_error(post(small_server, body, "/v1/chat/completions"), 400, param)


def test_invalid_json_and_non_object_bodies(small_server):
    for raw in (b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b"[" * 3000,
                b'{"model": "stories-chat", "prompt": "\\ud800 lone surrogate", "max_tokens": 3}'):
        assert_error(post(small_server, raw), 400, None)
    chat = b'{"model": "stories-chat", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 3}'
    assert_error(post(small_server, chat, "/v1/chat/completions"), 400, None)


def test_unknown_model_is_404(small_server):
    error = assert_error(post(small_server, {**GOOD, "model": "gpt-4"}), 404, "model")
    assert error["code"] == "model_not_found" and MODEL in error["message"]
    assert_error(http_request(small_server, "GET", "/v1/models/gpt-4"), 404, "model")


def test_prompt_longer_than_the_context_is_400(small_server, generator):
    context = generator.context_length
    error = assert_error(post(small_server, {**GOOD, "prompt": [1] + [300] * (context + 10)}), 400, "prompt")
    assert error["code"] == "context_length_exceeded" and str(context) in error["message"]
    long_text = "Once upon a time there was a dog. " * 80  # > 512 tokens
    assert_error(post(small_server, {**GOOD, "prompt": long_text, "max_tokens": None}), 400, "prompt")
    # fits, but not together with max_tokens
    error = assert_error(post(small_server, {**GOOD, "prompt": [1] + [300] * (context - 20), "max_tokens": 40}),
                         400, "max_tokens")
    assert error["code"] == "context_length_exceeded"


def test_oversized_body_is_413_declared_or_chunked(small_server):
    big = {**GOOD, "prompt": "x" * (BODY_LIMIT + 10)}
    error = assert_error(post(small_server, big), 413, None)
    assert error["code"] == "request_too_large"
    parts = urlsplit(small_server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    chunks = (b"a" * 1024 for _ in range(BODY_LIMIT // 1024 + 2))  # no Content-Length: chunked encoding
    conn.request("POST", "/v1/completions", body=chunks, headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_unknown_routes_and_methods_are_error_objects(small_server):
    assert_error(http_request(small_server, "GET", "/v1/nothing"), 404, None)
    assert_error(http_request(small_server, "GET", "/v1/completions"), 405, None)
    assert_error(http_request(small_server, "GET", "/docs"), 404, None)


def test_garbage_bytes_on_the_socket_do_not_hurt(small_server):
    parts = urlsplit(small_server)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"\x00\x01garbage\r\n\r\n")
        sock.recv(1024)  # uvicorn answers 400 or closes


def test_server_keeps_serving_and_never_answered_5xx(small_server, generator):
    status, body = post(small_server, GOOD)
    assert status == 200
    assert body["choices"][0]["text"] == generator.generate(GOOD["prompt"], max_new_tokens=5).text
    assert http_request(small_server, "GET", "/health")[0] == 200
    _, metrics = http_request(small_server, "GET", "/metrics")
    assert metric_value(metrics, "eaglespec_requests_total", {"endpoint": "/v1/completions", "status": "400"}) >= 28
    assert metric_value(metrics, "eaglespec_requests_total", {"endpoint": "/v1/completions", "status": "413"}) == 2
    for status in ("500", "502", "503", "504"):
        assert metric_value(metrics, "eaglespec_requests_total", {"status": status}) == 0


# -- API key --------------------------------------------------------------------------------------------------
KEY = "test-key-123"


@pytest.fixture(scope="module")
def keyed_server(start_server) -> str:
    return start_server(api_key=KEY)


def test_api_key_required_everywhere_but_health(keyed_server):
    assert http_request(keyed_server, "GET", "/health")[0] == 200
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/metrics", None),
                               ("POST", "/v1/completions", GOOD), ("POST", "/v1/chat/completions", {}),
                               ("GET", "/v1/unknown", None)):
        error = assert_error(http_request(keyed_server, method, path, body), 401, None)
        assert error["code"] == "invalid_api_key" and "missing" in error["message"]
        for header in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY, f"Basic {KEY}", "Bearer"):
            assert_error(http_request(keyed_server, method, path, body, {"Authorization": header}), 401, None)
    auth = {"Authorization": f"Bearer {KEY}"}
    assert http_request(keyed_server, "GET", "/v1/models", headers=auth)[0] == 200
    assert http_request(keyed_server, "GET", "/metrics", headers=auth)[0] == 200
    assert http_request(keyed_server, "POST", "/v1/completions", GOOD, auth)[0] == 200


def test_api_key_with_the_openai_client(keyed_server):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=keyed_server + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(**GOOD).usage.completion_tokens == 5
    bad = openai.OpenAI(base_url=keyed_server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(**GOOD)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        good.completions.create(**{**GOOD, "n": 3})
    with pytest.raises(openai.NotFoundError):
        good.completions.create(**{**GOOD, "model": "other"})


def _random_value(rng):
    choices = [None, True, False, 0, -1, 3, 2**70, 0.5, -2.5, float("inf"), "", "x", "stories-chat", [], [1, 2],
               ["a"], [[1]], {}, {"a": 1}, [{"role": "user", "content": "hi"}], [{"role": "user", "content": 5}]]
    return rng.choice(choices)


def test_random_bodies_never_get_a_5xx(small_server):
    """Fuzz: every field of both endpoints (and unknown ones) with values of random types; all answers < 500."""
    import random

    rng = random.Random(0)
    fields = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
              "n", "stream", "stream_options", "stop", "seed", "user", "echo", "logprobs", "presence_penalty",
              "logit_bias", "suffix", "best_of", "tools"]
    for i in range(120):
        body = {"model": MODEL, "prompt": "Once", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for name in rng.sample(fields, rng.randint(1, 4)):
            body[name] = _random_value(rng)
        if rng.random() < 0.5:
            body.pop(rng.choice(["prompt", "messages"]))
        path = rng.choice(["/v1/completions", "/v1/chat/completions"])
        status, answer = http_request(small_server, "POST", path, json.dumps(body, allow_nan=True).encode())
        assert status < 500, (body, answer)
