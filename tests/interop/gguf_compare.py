"""Compare two GGUF files key by key and tensor by tensor (names, types, shapes, values).

Usage: python tests/interop/gguf_compare.py OURS.gguf THEIRS.gguf
Prints one line per difference and exits 0 (a report; the interop test decides which differences are explained).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    kind: str  # "metadata" | "tensor"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.detail}"


def _values(path: str) -> tuple[dict, dict]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta = {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return meta, tensors


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def metadata_differences(ours: dict, theirs: dict) -> list[Difference]:
    out = [Difference("metadata", k, "only in ours") for k in sorted(set(ours) - set(theirs))]
    out += [Difference("metadata", k, "only in theirs") for k in sorted(set(theirs) - set(ours))]
    for key in sorted(set(ours) & set(theirs)):
        (t1, v1), (t2, v2) = ours[key], theirs[key]
        if t1 != t2:
            out.append(Difference("metadata", key, f"type {t1} vs {t2}"))
        elif v1 != v2:
            out.append(Difference("metadata", key, f"ours {_brief(v1)}, theirs {_brief(v2)}"))
    return out


def tensor_differences(ours: dict, theirs: dict) -> list[Difference]:
    out = [Difference("tensor", k, "only in ours") for k in sorted(set(ours) - set(theirs))]
    out += [Difference("tensor", k, "only in theirs") for k in sorted(set(theirs) - set(ours))]
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape):
            out.append(Difference("tensor", name, f"{a.tensor_type.name} {list(a.shape)} vs "
                                                  f"{b.tensor_type.name} {list(b.shape)}"))
        elif not np.array_equal(np.asarray(a.data), np.asarray(b.data)):
            diff = np.abs(np.asarray(a.data, dtype=np.float64) - np.asarray(b.data, dtype=np.float64)).max()
            out.append(Difference("tensor", name, f"values differ (max abs difference {diff:g})"))
    return out


def compare(ours_path: str, theirs_path: str) -> list[Difference]:
    (m1, t1), (m2, t2) = _values(ours_path), _values(theirs_path)
    return metadata_differences(m1, m2) + tensor_differences(t1, t2)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    diffs = compare(*argv)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
