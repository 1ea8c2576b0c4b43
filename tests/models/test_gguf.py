"""`eaglespec convert gguf`: a small GGUF written by the `gguf` package (as llama.cpp's converter writes one:
rotary-permuted q/k, Q8_0 blocks, a byte-level BPE vocabulary and a chat template) comes back as the Hugging
Face model and tokenizer it was written from; bad files are rejected with nothing written."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eaglespec.cli import main

gguf = pytest.importorskip("gguf")
from gguf_writer import TEXT, small_tokenizer, tiny_llama, write_gguf  # noqa: E402

@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    tok = small_tokenizer()
    model = tiny_llama(tok.get_vocab_size())
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    expected = write_gguf(path, model, tok)
    return path, model, tok, expected


@pytest.fixture(scope="module")
def converted(small_gguf, tmp_path_factory):
    path = small_gguf[0]
    out = tmp_path_factory.mktemp("converted") / "model"
    assert main(["convert", "gguf", str(path), "--output", str(out), "--dtype", "float32"]) == 0
    return out


def test_weights_round_trip(small_gguf, converted):
    """Every tensor is the de-quantized original, q/k back in Hugging Face's rotate-half order."""
    _, model, _, expected = small_gguf
    ours = load_file(str(converted / "model.safetensors"))
    assert set(ours) - {"lm_head.weight"} == set(expected)
    for name, want in expected.items():
        assert ours[name].dtype == torch.float32, name
        assert torch.equal(ours[name], want.to(torch.float32)), name
        # and Q8_0 is close to the original weights (a wrong permutation would be far)
        assert torch.allclose(ours[name], model.state_dict()[name].float(), atol=0.02), name


def test_model_config_and_logits(small_gguf, converted):
    """The directory loads with plain transformers, without quantization settings, and computes what the
    original model computes with the de-quantized weights."""
    from transformers import AutoModelForCausalLM

    _, model, _, expected = small_gguf
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["hidden_size"]) == (2, 2, 64)
    loaded = AutoModelForCausalLM.from_pretrained(str(converted)).eval()
    assert loaded.config.tie_word_embeddings
    reference = type(model)(model.config).eval()
    reference.load_state_dict({**expected, "lm_head.weight": expected["model.embed_tokens.weight"]})
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_tokenizer_round_trip(small_gguf, converted):
    """Same ids for plain text and for special tokens, the chat template kept, EOS from the GGUF."""
    from transformers import AutoTokenizer

    _, _, tok, _ = small_gguf
    ours = AutoTokenizer.from_pretrained(str(converted))
    for text in ["The capital of France is Paris.", "  Paris,\n\ncity  é ünïcode 123", TEXT[:200]]:
        assert ours(text, add_special_tokens=False)["input_ids"] == tok.encode(text).ids, text
    messages = [{"role": "user", "content": "Where is Paris?"}]
    rendered = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nWhere is Paris?<|im_end|>\n<|im_start|>assistant\n"
    assert ours(rendered, add_special_tokens=False)["input_ids"][0] == tok.token_to_id("<|im_start|>")
    assert ours.eos_token == "<|im_end|>"


def test_not_gguf_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    out = tmp_path / "out"
    assert main(["convert", "gguf", str(bad), "--output", str(out)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "not a GGUF file" in err
    assert not out.exists()


def test_unsupported_architecture_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "no-such-arch")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    assert main(["convert", "gguf", str(path), "--output", str(out)]) != 0
    err = capsys.readouterr().err
    assert str(path) in err and "no-such-arch" in err
    assert not out.exists()
