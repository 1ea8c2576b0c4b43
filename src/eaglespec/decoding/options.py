"""`GenerationOptions`: what one request asks of the decoder (length, sampling, stopping, seed), typed and checked.

Built once at each edge (CLI flags, an HTTP request body, a Python call's keywords via `generation_options`) and
passed as is through `SpeculativeGenerator.stream`, the running batch and the server's scheduler. Every default
lives here and nowhere else.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace

from eaglespec.decoding.sampling import SamplingConfig


class InvalidOption(ValueError):
    """A generation option with a bad value; `field` names it (the message names it and the value too)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class GenerationOptions:
    """temperature 0 = greedy; eos_token_id None = the model's own EOS ids, () = none; seed None = random."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    eos_token_id: int | tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()  # stop strings: the output ends with the token that completes one
    seed: int | None = None

    def __post_init__(self) -> None:
        self._set("max_new_tokens", _integer("max_new_tokens", self.max_new_tokens, minimum=1))
        self._set("temperature", _real("temperature", self.temperature))
        self._set("top_p", _real("top_p", self.top_p))
        self._set("top_k", _integer("top_k", self.top_k, minimum=0))
        self._set("eos_token_id", _eos_ids(self.eos_token_id))
        self._set("stop", _stop_strings(self.stop))
        if self.seed is not None:
            self._set("seed", _integer("seed", self.seed))
        for name in ("temperature", "top_p", "top_k"):  # SamplingConfig's range checks, one field at a time
            try:
                SamplingConfig(**{name: getattr(self, name)})
            except ValueError as e:
                raise InvalidOption(name, str(e)) from None

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own fields in __post_init__

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k)


FIELDS = tuple(f.name for f in fields(GenerationOptions))


def generation_options(options: GenerationOptions | None = None, /, **settings) -> GenerationOptions:
    """The options of a Python call: `options` (default: all defaults) with the keyword `settings` (fields of
    GenerationOptions) replaced; a setting given as None keeps the default. Unknown keywords are errors."""
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown generation option(s) {unknown}; expected some of {list(FIELDS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    if options is None:
        return GenerationOptions(**given)
    return replace(options, **given) if given else options


def _integer(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
        raise InvalidOption(name, f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidOption(name, f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOption(name, f"{name} must be a number, got {value!r}")
    return float(value)


def _eos_ids(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    ids = (value,) if isinstance(value, numbers.Real) else tuple(value)
    return tuple(_integer("eos_token_id", i) for i in ids)


def _stop_strings(value) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InvalidOption("stop", f"stop strings must be non-empty strings, got {s!r}")
    return stops
