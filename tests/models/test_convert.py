"""`eaglespec convert llama2c`: correct conversion, and bad files rejected with nothing written."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from eaglespec.cli import main
from eaglespec.models import bundled_model_path
from eaglespec.models.llama2c import read_llama2c
from paths import shared_path


def _sources():
    return shared_path("models", "stories260K", "stories260K.bin"), shared_path("models", "stories260K", "tok512.model")


def test_convert_matches_bundled_model(tmp_path):
    src, tok = _sources()
    out = tmp_path / "model"
    assert main(["convert", "llama2c", str(src), "--tokenizer", str(tok), "--output", str(out)]) == 0
    ours = load_file(str(out / "model.safetensors"))
    bundled = load_file(str(bundled_model_path() / "model.safetensors"))
    assert ours.keys() == bundled.keys()
    for k in ours:
        assert torch.equal(ours[k], bundled[k]), k
    assert (out / "tokenizer.model").read_bytes() == tok.read_bytes()


def test_rotary_permutation_matches_interleaved_rope():
    """HF rotate-half RoPE on permuted wq equals llama2.c's interleaved-pair RoPE on the original rows."""
    src, _ = _sources()
    header, sd = read_llama2c(src)
    hd, nh = header.head_dim, header.n_heads
    x = torch.randn(3, header.dim)
    pos = torch.arange(3).float()[:, None]
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))  # [hd/2]
    ang = pos * freqs  # [3, hd/2]
    # llama2.c: original rows, rotate pairs (2i, 2i+1)
    with open(src, "rb") as f:
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.float32, offset=28)
    V, D = header.vocab_size, header.dim
    wq0 = raw[V * D + header.n_layers * D:][: D * D].view(D, D)
    q = (x @ wq0.T).view(3, nh, hd // 2, 2)
    c, s = ang.cos()[:, None], ang.sin()[:, None]
    ref = torch.stack((q[..., 0] * c - q[..., 1] * s, q[..., 0] * s + q[..., 1] * c), dim=-1).reshape(3, nh, hd)
    # HF: permuted rows, rotate halves
    qh = (x @ sd["model.layers.0.self_attn.q_proj.weight"].T).view(3, nh, hd)
    cos = torch.cat((ang.cos(), ang.cos()), -1)[:, None]
    sin = torch.cat((ang.sin(), ang.sin()), -1)[:, None]
    rot = torch.cat((-qh[..., hd // 2:], qh[..., : hd // 2]), -1)
    hf = qh * cos + rot * sin
    # Same attention scores between different positions (per head): the per-head reordering of dims
    # is invisible to dot products, but a wrong pairing of rotated dims is not.
    scores_ref = torch.einsum("ihd,jhd->hij", ref, ref)
    scores_hf = torch.einsum("ihd,jhd->hij", hf, hf)
    assert torch.allclose(scores_ref, scores_hf, atol=1e-4)


def test_truncated_file_is_rejected_and_nothing_written(tmp_path, capsys):
    src, tok = _sources()
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(src.read_bytes()[:-1000])
    out = tmp_path / "out"
    assert main(["convert", "llama2c", str(bad), "--tokenizer", str(tok), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "truncated.bin" in err and "does not match the header" in err and "truncated" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["truncated.bin"]


def test_wrong_file_is_rejected(tmp_path, capsys):
    _, tok = _sources()
    bad = tmp_path / "notamodel.bin"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    assert main(["convert", "llama2c", str(bad), "--tokenizer", str(tok), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "notamodel.bin" in err and "header" in err
    assert not (tmp_path / "o").exists()


def test_refuses_non_empty_output(tmp_path, capsys):
    src, tok = _sources()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["convert", "llama2c", str(src), "--tokenizer", str(tok), "--output", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


def test_missing_tokenizer(tmp_path, capsys):
    src, _ = _sources()
    assert main(["convert", "llama2c", str(src), "--tokenizer", str(tmp_path / "nope.model"),
                 "--output", str(tmp_path / "o")]) == 1
    assert "nope.model" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
