"""The standard library's Python source as a corpus: which files, and which of them are held out.

Tests, `site-packages`, IDLE's tests and generated codec tables are left out; the split is a seeded hash
of the path relative to the library root, so a file stays on its side whatever else is added or removed, on
any machine.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
# pydoc_data/topics.py (757 KB, generated documentation text held in one dict) is the one larger file in
# CPython 3.11; it is prose, not code. The largest real module, _pydecimal.py, is 229 KB.
MAX_FILE_BYTES = 256_000
HASH_BUCKETS = 1_000_000  # resolution of the held-out fraction
# The 65 charmap codecs in encodings/ (cp1252.py, mac_roman.py, ...) are tables written by Tools/unicode/
# gencodec.py, 1.2 MB (11% of the text) of `'\x00'  #  0x00 -> NULL` lines: not code anyone completes, and
# trivially predictable, so they would flatter the held-out loss.
GENERATED_MARKER = "gencodec.py"


@dataclass(frozen=True)
class SourceFile:
    relative_path: str  # POSIX path under the library root, e.g. "json/decoder.py"
    text: str


@dataclass(frozen=True)
class Corpus:
    root: str
    train: tuple[SourceFile, ...]
    heldout: tuple[SourceFile, ...]

    @property
    def train_chars(self) -> int:
        return sum(len(f.text) for f in self.train)


def stdlib_root() -> Path:
    """This interpreter's standard library folder (PSF licence)."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relative_path: str, seed: int, heldout_fraction: float) -> bool:
    """Whether a file is held out: sha256 of "seed:path" in [0, 1) below the fraction."""
    digest = hashlib.sha256(f"{seed}:{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS < heldout_fraction * HASH_BUCKETS


def source_paths(root: Path) -> list[Path]:
    """Every *.py file under root outside the excluded folders, sorted (the order is the same everywhere)."""
    if not root.is_dir():
        raise ValueError(f"--source: {root} is not a directory")
    return sorted(p for p in root.rglob("*.py")
                  if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])
                  and p.stat().st_size <= MAX_FILE_BYTES)


def _read(path: Path, root: Path) -> SourceFile | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a few stdlib files are Latin-1 test data; not worth a codec guess
        return None
    if not text.strip() or GENERATED_MARKER in text:
        return None
    return SourceFile(path.relative_to(root).as_posix(), text)


def load_corpus(root: Path, seed: int, heldout_fraction: float) -> Corpus:
    """The readable, hand-written source files under root, split into train and held-out."""
    files = [f for f in (_read(p, root) for p in source_paths(root)) if f is not None]
    if not files:
        raise ValueError(f"--source: no readable *.py files under {root}")
    heldout = tuple(f for f in files if is_heldout(f.relative_path, seed, heldout_fraction))
    train = tuple(f for f in files if not is_heldout(f.relative_path, seed, heldout_fraction))
    if not train or not heldout:
        raise ValueError(f"--source: {root} has {len(files)} files; the split left train {len(train)}, "
                         f"held-out {len(heldout)} (use a larger tree or another --heldout-fraction)")
    return Corpus(str(root), train, heldout)
