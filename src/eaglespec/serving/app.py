"""The FastAPI application (needs the `serve` extra): OpenAI routes, server-sent events, the web page, /health, /metrics, and a guard in
front of everything (API key, body size limit, request counting). Every error is an OpenAI error object."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.serving.config import ServeConfig
from eaglespec.serving.metrics import ServerMetrics
from eaglespec.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    completion_chunk,
    new_id,
    parse_request,
    usage_chunk,
)
from eaglespec.serving.service import Answer, GenerationService, RequestHandle

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/"})  # "/" is the static page from the package: no data, it calls the API
#                                             with the key the user types in
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Endpoint:
    """What differs between /v1/completions and /v1/chat/completions, each difference stated once."""

    request: type[CompletionRequest] | type[ChatCompletionRequest]
    prompt_ids: Callable[[GenerationService, object], list[int]]  # the request's prompt as checked token ids
    id_prefix: str  # of the response id: cmpl-... / chatcmpl-...
    chunk_object: str  # the `object` of a streamed chunk
    body: Callable[..., dict]  # the whole response (protocol.completion_body / chat_body)
    chunk: Callable[..., dict]  # one streamed chunk (protocol.completion_chunk / chat_chunk)
    delta: Callable[[str], dict | str]  # streamed text as a chunk carries it
    last_delta: Callable[[str], dict | str]  # the text held back by the stop filter, in the final chunk
    opening: dict | None  # a first chunk's delta before any text (chat announces the role)


def _chat_delta(text: str) -> dict:
    return {"content": text}


def _chat_last_delta(text: str) -> dict:
    return {"content": text} if text else {}


def _text_delta(text: str) -> str:
    return text


ENDPOINTS = {
    "/v1/completions": Endpoint(CompletionRequest, GenerationService.completion_ids, "cmpl", "text_completion",
                                completion_body, completion_chunk, _text_delta, _text_delta, None),
    "/v1/chat/completions": Endpoint(ChatCompletionRequest, GenerationService.chat_ids, "chatcmpl",
                                     "chat.completion.chunk", chat_body, chat_chunk, _chat_delta, _chat_last_delta,
                                     {"role": "assistant", "content": ""}),
}


def create_app(generator: SpeculativeGenerator, config: ServeConfig) -> GuardMiddleware:
    """The ASGI app serving `generator`; the model thread starts and stops with the app's lifespan."""
    metrics = ServerMetrics()
    service = GenerationService(generator, config, metrics)

    @asynccontextmanager
    async def lifespan(app):
        service.scheduler.start()
        yield
        service.scheduler.stop()

    app = FastAPI(title="eaglespec", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    _install_error_handlers(app)
    _add_routes(app, service, metrics)
    # outside FastAPI's own middleware, so it also counts the 500s that FastAPI's outermost layer answers
    return GuardMiddleware(app, config=config, metrics=metrics)


# -- guard ---------------------------------------------------------------------------------------------------------
class GuardMiddleware:
    """Pure ASGI, in front of all routes: counts every response by endpoint and status, checks the bearer key
    (constant time), and answers 413 for bodies over the limit (declared or streamed) before the app reads them."""

    def __init__(self, app, config: ServeConfig, metrics: ServerMetrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.key = config.api_key.encode() if config.api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.metrics.count_request(path, message["status"])
            await send(message)

        error = self._auth_error(scope)
        body = None
        if error is None:
            body, error = await self._read_body(scope, receive)
        if error is not None:
            return await _error_response(error)(scope, receive, counted_send)
        await self.app(scope, _replay(body, receive), counted_send)

    def _auth_error(self, scope) -> APIError | None:
        if self.key is None or scope["path"] in PUBLIC_PATHS:
            return None
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return None
        what = "missing" if not header else "wrong"
        return APIError(401, f"{what} API key: send the header 'Authorization: Bearer <key>'",
                        type="authentication_error", code="invalid_api_key")

    async def _read_body(self, scope, receive) -> tuple[bytes, APIError | None]:
        limit = self.config.max_request_bytes
        too_big = APIError(413, f"request body over this server's limit of {limit} bytes", code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", too_big
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None  # the client left before sending its body; the app will notice
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                return b"", too_big
            if not message.get("more_body", False):
                return b"".join(parts), None


def _replay(body: bytes | None, receive):
    """A receive() that first returns the buffered body, then waits on the client (disconnects) as usual."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        return await receive()

    return replay


def _error_response(error: APIError):
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _install_error_handlers(app) -> None:
    async def api_error(request, exc: APIError):
        return _error_response(exc)

    async def http_error(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(APIError(exc.status_code, message, type=kind))

    async def unexpected(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


# -- routes --------------------------------------------------------------------------------------------------------
async def _json_body(request) -> object:
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    try:  # JSON escapes can spell lone UTF-16 surrogates ("\ud800"), which no tokenizer can encode
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"the request body has a string that is not valid Unicode: {e.reason}") from None
    return payload


def _add_routes(app, service: GenerationService, metrics: ServerMetrics) -> None:
    page = resources.files("eaglespec.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        waiting, active = service.scheduler.load
        return {"status": "ok", "waiting": waiting, "active": active}

    @app.get("/metrics")
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(service)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        service.check_model(model_id)
        return _model_card(service)

    for path, endpoint in ENDPOINTS.items():
        _add_generation_route(app, service, path, endpoint)


def _add_generation_route(app, service: GenerationService, path: str, endpoint: Endpoint) -> None:
    async def generate(request: Request):
        body = parse_request(endpoint.request, await _json_body(request))
        service.check_model(body.model)
        return await _respond(service, request, body, endpoint.prompt_ids(service, body), endpoint)

    app.post(path)(generate)


def _model_card(service: GenerationService) -> dict:
    generator = service.generator
    return {"id": service.model_name, "object": "model", "created": 0, "owned_by": "eaglespec",
            "eaglespec": {"context_length": generator.context_length, "chat_template": service.has_chat_template,
                          "max_new_tokens_limit": service.config.max_new_tokens_limit,
                          "max_batch_size": service.config.max_batch_size,
                          "draft_method": generator.draft.config.method, "tree": generator.tree.kind}}


async def _respond(service: GenerationService, request, body, ids: list[int], endpoint: Endpoint):
    handle, answer = service.submit(ids, body)
    rid = new_id(endpoint.id_prefix)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(handle, answer, rid, service.model_name, endpoint, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        async for _ in handle.steps(answer, request.is_disconnected):
            pass
    finally:
        handle.cancel()  # no-op when finished; stops the generation when the client left or the handler failed
    return endpoint.body(rid, service.model_name, answer.text, answer.finish_reason, answer.usage(),
                         answer.summary(True))


async def _sse(handle: RequestHandle, answer: Answer, rid: str, model: str, endpoint: Endpoint,
               include_usage: bool) -> AsyncIterator[str]:
    """OpenAI chunks as server-sent events, ending with `data: [DONE]`. The disconnect of a client cancels this
    iterator (Starlette), and the `finally` stops its generation between two steps."""
    try:
        if endpoint.opening is not None:
            yield _event(endpoint.chunk(rid, model, endpoint.opening, None, None))
        async for step in handle.steps(answer):
            yield _event(endpoint.chunk(rid, model, endpoint.delta(step.text), None, step.extra()))
        last = endpoint.last_delta(answer.filter.finish())
        yield _event(endpoint.chunk(rid, model, last, answer.finish_reason, answer.summary(False)))
        if include_usage:
            yield _event(usage_chunk(rid, endpoint.chunk_object, model, answer.usage()))
    except APIError as e:
        yield _event(e.body())
    finally:
        handle.cancel()
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
