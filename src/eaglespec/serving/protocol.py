"""OpenAI wire format: request schemas (validated with pydantic, unknown fields rejected), error objects, and the
JSON of responses and stream chunks. No model here: `service.py` turns a validated request into a generation."""

from __future__ import annotations

import time
import typing
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

MAX_STOP_STRINGS = 4  # the OpenAI API accepts up to 4 stop sequences


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


Number = StrictFloat | StrictInt


class _Sampling(BaseModel):
    """Fields both endpoints share. Fields the OpenAI API has but eaglespec does not implement are accepted only
    at their neutral value, so a client never gets silently different behaviour."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: Number = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 = greedy
    top_p: Number = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(0, ge=0)  # an extension (as in vLLM): 0 = off
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    user: StrictStr | None = None
    presence_penalty: Number = 0.0
    frequency_penalty: Number = 0.0
    logit_bias: dict[str, Number] | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop sequences, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop: stop sequences must be non-empty strings", param="stop")
        return stops

    def check_supported(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n must be 1 (eaglespec decodes one sequence per request), got {self.n}", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise APIError(400, f"{name} is not supported (only 0)", param=name)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    echo: StrictBool = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None

    def check_supported(self) -> None:
        super().check_supported()
        unsupported = [("echo", self.echo), ("logprobs", self.logprobs is not None),
                       ("best_of", self.best_of not in (None, 1)), ("suffix", self.suffix is not None)]
        for name, used in unsupported:
            if used:
                raise APIError(400, f"{name} is not supported", param=name)

    def single_prompt(self) -> str | list[int]:
        """The prompt as text or token ids; a batch of several prompts is an error (n=1, one prompt)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: one prompt per request, got a batch of {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise APIError(400, "prompt is empty", param="prompt")
        return prompt


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def as_template_message(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": content}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None  # the newer name of max_tokens
    logprobs: StrictBool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise APIError(400, "logprobs is not supported", param="logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens


def parse_request(model: type[BaseModel], payload: object) -> BaseModel:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        request = model.model_validate(payload)
    except ValidationError as e:
        raise validation_error(e, model) from None
    request.check_supported()
    return request


def validation_error(e: ValidationError, model: type[BaseModel]) -> APIError:
    """The first problem, named by its field path (`messages.0.role`); union alternatives count once."""
    errors = e.errors()
    params = list(dict.fromkeys(_field_path(model, err) for err in errors))
    first = errors[0]
    value = "" if first["type"] in ("missing", "extra_forbidden") else f", got {first['input']!r}"[:120]
    kind = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    extra = f" ({len(params) - 1} more fields with problems)" if len(params) > 1 else ""
    return APIError(400, f"{params[0] or 'body'}: {kind}{value}{extra}", param=params[0] or None)


def _field_path(model: type[BaseModel] | None, error: dict) -> str:
    """loc ('prompt', 'list[int]', 1) -> 'prompt': keep field names and list indices, drop union member tags."""
    if error["type"] == "extra_forbidden":
        return ".".join(str(part) for part in error["loc"])
    path = []
    for part in error["loc"]:
        if isinstance(part, int):
            path.append(str(part))
        elif model is not None and part in model.model_fields:
            path.append(part)
            model = _model_in(model.model_fields[part].annotation)
        else:
            break
    return ".".join(path)


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like list[ChatMessage] or StreamOptions | None, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion_body(rid: str, model: str, text: str, finish_reason: str, usage_: dict, extra: dict) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage_, "eaglespec": extra}


def chat_body(rid: str, model: str, text: str, finish_reason: str, usage_: dict, extra: dict) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
              "finish_reason": finish_reason}
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage_, "eaglespec": extra}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None, extra: dict | None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(rid, "text_completion", model, [choice], extra)


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None, extra: dict | None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(rid, "chat.completion.chunk", model, [choice], extra)


def usage_chunk(rid: str, object_: str, model: str, usage_: dict) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, only usage."""
    return {"id": rid, "object": object_, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage_}


def _chunk(rid: str, object_: str, model: str, choices: list, extra: dict | None) -> dict:
    body = {"id": rid, "object": object_, "created": int(time.time()), "model": model, "choices": choices}
    if extra is not None:
        body["eaglespec"] = extra
    return body
