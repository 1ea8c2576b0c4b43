"""Writing a GGUF file (metadata + tensors) with the `gguf` package, and reading one back to check or compare it.

GGUF stores a tensor's dimensions fastest-varying first (ggml's `ne`), the reverse of torch's order; every shape
here is in torch order and reversed only at the file boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from eaglespec.export.gguf_vocab import MetaValue
from eaglespec.export.layout import TensorSpec

# ggml tensor type name <-> torch dtype, for the types an EAGLE-3 draft GGUF holds
ARCH_KEY = "general.architecture"
GGML_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise ImportError("writing or reading GGUF files needs the `gguf` package: pip install 'eaglespec[gguf]'") from e
    return gguf


@dataclass(frozen=True)
class GGUFContents:
    """A GGUF file read back: its metadata (GGUF.* header fields left out) and tensor specs (torch order)."""

    metadata: dict[str, MetaValue]
    tensors: dict[str, TensorSpec]


def _raw(t: torch.Tensor) -> tuple[np.ndarray, Any]:
    """A tensor as the numpy array GGUFWriter takes, and the ggml type to declare (None: from the numpy dtype)."""
    gguf = _require_gguf()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16
    if t.dtype == torch.int64:
        return t.numpy(), gguf.GGMLQuantizationType.I64
    return t.numpy(), None


def write_gguf(path: str | os.PathLike, arch: str, metadata: dict[str, MetaValue], tensors: dict[str, torch.Tensor],
               check: Callable[[Path], None] | None = None) -> None:
    """Write `metadata` and `tensors` to `path`: into a temporary file beside it, passed to `check` (which
    raises on a bad file), then renamed; on any error nothing is left at `path` or beside it."""
    gguf = _require_gguf()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)  # writes general.architecture itself
    if metadata.get(ARCH_KEY, MetaValue(arch, "STRING")) != MetaValue(arch, "STRING"):
        raise ValueError(f"{ARCH_KEY} {metadata[ARCH_KEY].value!r} disagrees with the writer's {arch!r}")
    try:
        for key, meta in metadata.items():
            if key == ARCH_KEY:
                continue
            sub = gguf.GGUFValueType[meta.sub_type] if meta.sub_type else None
            writer.add_key_value(key, meta.value, gguf.GGUFValueType[meta.vtype], sub_type=sub)
        for name, t in tensors.items():
            array, raw_dtype = _raw(t)
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if check is not None:
            check(tmp)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _field_value(field: Any, gguf: Any) -> MetaValue:
    vtype = gguf.GGUFValueType(field.types[0]).name
    sub = gguf.GGUFValueType(field.types[1]).name if len(field.types) > 1 else None
    value = field.contents()
    if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
        value = np.float32(value).tolist()  # compare as stored (float32)
    return MetaValue(value, vtype, sub)


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Metadata and tensor specs of the GGUF at `path`."""
    gguf = _require_gguf()
    reader = gguf.GGUFReader(str(path))
    metadata = {k: _field_value(f, gguf) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        type_name = gguf.GGMLQuantizationType(t.tensor_type).name
        dtype = GGML_TYPES.get(type_name)
        if dtype is None:
            raise ValueError(f"{path}: tensor {t.name} has ggml type {type_name}; expected one of {sorted(GGML_TYPES)}")
        tensors[t.name] = TensorSpec(t.name, tuple(int(n) for n in reversed(t.shape)), dtype)
    return GGUFContents(metadata, tensors)


def _stored(meta: MetaValue) -> MetaValue:
    """`meta` as read back (FLOAT32 values rounded to float32)."""
    floats = meta.vtype == "FLOAT32" or meta.sub_type == "FLOAT32"
    return MetaValue(np.float32(meta.value).tolist(), meta.vtype, meta.sub_type) if floats else meta


def metadata_differences(expected: dict[str, MetaValue], found: dict[str, MetaValue]) -> list[str]:
    """One line per key missing, extra, of another type or with another value."""
    problems = [f"missing metadata key {k}" for k in sorted(set(expected) - set(found))]
    problems += [f"unexpected metadata key {k}" for k in sorted(set(found) - set(expected))]
    for key in sorted(set(expected) & set(found)):
        want, got = _stored(expected[key]), found[key]
        if (want.vtype, want.sub_type) != (got.vtype, got.sub_type):
            problems.append(f"{key}: type {got.vtype}/{got.sub_type}, expected {want.vtype}/{want.sub_type}")
        elif want.value != got.value:
            problems.append(f"{key}: {_brief(got.value)}, expected {_brief(want.value)}")
    return problems


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_gguf(path: str | os.PathLike, metadata: dict[str, MetaValue], tensors: dict[str, TensorSpec]) -> None:
    """Read `path` back and raise ValueError naming every metadata key or tensor that is not as expected."""
    from eaglespec.export.layout import check_tensors

    contents = read_gguf(path)
    problems = metadata_differences(metadata, contents.metadata)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    as_meta = {n: torch.empty(s.shape, dtype=s.dtype, device="meta") for n, s in contents.tensors.items()}
    check_tensors(as_meta, tensors, f"GGUF written to {path}")
