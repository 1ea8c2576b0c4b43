"""What bench reads from GGUF files with the `gguf` package: a target's vocabulary and a draft's architecture."""

from __future__ import annotations

import os
from pathlib import Path


def gguf_architecture(path: str | os.PathLike) -> str:
    """`general.architecture` of a GGUF file (how bench tells our EAGLE-3 and DFlash draft GGUFs apart)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--gguf-draft {path}: no such file")
    field_ = gguf_field(path, "general.architecture")
    return bytes(field_.parts[field_.data[0]]).decode("utf-8")


def gguf_vocabulary(path: str | os.PathLike) -> list[str]:
    """`tokenizer.ggml.tokens` of a GGUF file, by id."""
    field_ = gguf_field(path, "tokenizer.ggml.tokens")
    return [bytes(field_.parts[i]).decode("utf-8", errors="replace") for i in field_.data]


def gguf_field(path: str | os.PathLike, key: str):
    """The metadata field `key` of a GGUF file; an unreadable file or a missing key is an error naming both."""
    from gguf import GGUFReader

    try:
        field_ = GGUFReader(path).get_field(key)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    if field_ is None:
        raise ValueError(f"{path}: no {key} in this GGUF")
    return field_
