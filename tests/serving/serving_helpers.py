"""Helpers for the serving tests: plain HTTP requests (stdlib), OpenAI error objects, Prometheus samples, SSE."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

MODEL = "stories-chat"  # the served model name in every test server


def http_request(url: str, method: str, path: str, body: bytes | dict | list | None = None,
                 headers: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    """One plain HTTP request (stdlib) -> (status, JSON body or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        raw = response.read().decode()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except json.JSONDecodeError:
        return response.status, raw


def assert_error(status_and_body: tuple[int, dict | str], status: int, param: str | None = ...) -> dict:
    """An OpenAI-style error object with this status (and `param`, unless left out)."""
    got, body = status_and_body
    assert got == status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if param is not ...:
        assert error["param"] == param, error
    return error


def metric_value(text: str, name: str, labels: dict | None = None) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return 0.0


def read_sse(response) -> list[dict | str]:
    """Events of a server-sent-event stream (an http.client response): decoded JSON payloads, and "[DONE]"."""
    events = []
    for line in response:
        line = line.decode().rstrip("\n")
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
