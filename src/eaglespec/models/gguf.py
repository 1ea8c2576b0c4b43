"""GGUF -> a plain Hugging Face model directory, through transformers' own GGUF reader.

transformers de-quantizes every tensor of a GGUF file it supports into a normal `*ForCausalLM` (the
`gguf` package reads the file; `GgufConfig(dequantize=True)` asks for dense weights). The output directory holds only what a normal checkpoint holds:
config.json without `quantization_config`, model.safetensors in the chosen dtype, the tokenizer with its
chat template, and generation_config.json, so loading it needs neither `gguf` nor the original file.
"""

from __future__ import annotations

import os
from pathlib import Path

from eaglespec._io import atomic_directory

GGUF_MAGIC = b"GGUF"
DTYPES = ("bfloat16", "float32", "float16")


def check_gguf_file(path: Path) -> None:
    """A clear error for a missing file or one that is not GGUF (the magic bytes are checked, not the name)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file starts with {GGUF_MAGIC!r})")


def _require_gguf_packages() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ValueError("reading GGUF needs the `gguf` package: pip install 'eaglespec[gguf]'") from e


def load_gguf(path: str | os.PathLike, dtype: str = "bfloat16"):
    """(model, tokenizer) de-quantized from a GGUF file, or a ValueError naming the file and what is unsupported."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = Path(path).resolve()
    check_gguf_file(path)
    _require_gguf_packages()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # dequantize=True: plain dense tensors (newer transformers otherwise keep GGUF blocks for its kernels)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype),
                                                     quantization_config=GgufConfig(dequantize=True))
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ValueError(f"{path}: transformers cannot read this GGUF file: {e}") from e
    return model, tokenizer


def _strip_quantization(model) -> None:
    """The de-quantized weights are plain tensors: drop every trace of the GGUF source from the config."""
    for config in (model.config, model.config.get_text_config()):
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    model.config._name_or_path = ""
    model.config.name_or_path = ""
    model.config.dtype = next(model.parameters()).dtype


def convert_gguf(source: str | os.PathLike, output: str | os.PathLike, dtype: str = "bfloat16",
                 overwrite: bool = False) -> Path:
    """Write `output` (atomically) as a Hugging Face model directory equivalent to the GGUF `source`."""
    model, tokenizer = load_gguf(source, dtype)
    _strip_quantization(model)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(output)
