"""What bench reads from GGUF files with the `gguf` package: a target's vocabulary and a draft's architecture."""

from __future__ import annotations

import os
from pathlib import Path


def gguf_architecture(path: str | os.PathLike) -> str:
    """`general.architecture` of a GGUF file (how bench tells our EAGLE-3 and DFlash draft GGUFs apart)."""
    from gguf import GGUFReader

    if not Path(path).is_file():
        raise FileNotFoundError(f"--gguf-draft {path}: no such file")
    try:
        field_ = GGUFReader(path).get_field("general.architecture")
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    if field_ is None:
        raise ValueError(f"{path}: no general.architecture in this GGUF")
    return bytes(field_.parts[field_.data[0]]).decode("utf-8")


def gguf_vocabulary(path: str | os.PathLike) -> list[str]:
    """`tokenizer.ggml.tokens` of a GGUF file, by id."""
    from gguf import GGUFReader

    try:
        field_ = GGUFReader(path).get_field("tokenizer.ggml.tokens")
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    if field_ is None:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens in this GGUF")
    return [bytes(field_.parts[i]).decode("utf-8", errors="replace") for i in field_.data]
