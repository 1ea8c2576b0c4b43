"""The bundled stories260K loads with plain transformers and reproduces its known greedy story."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eaglespec.models import bundled_model_path

KNOWN = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."


def test_plain_transformers_greedy_continuation():
    path = str(bundled_model_path())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    assert ids[0].tolist() == [1, 403, 407, 261, 378]  # BOS + the SentencePiece ids
    out = model.generate(ids, do_sample=False, max_new_tokens=30)
    new = out[0, ids.shape[1]:]
    expected = tok(KNOWN, add_special_tokens=False).input_ids
    text = tok.decode(new)
    assert KNOWN.startswith(text), text
    assert len(new) == 30
    # token-level check of the first 30 new tokens against the known text's tokenization
    full = tok("Once upon a time" + KNOWN, add_special_tokens=True).input_ids
    assert new.tolist() == full[5:35]
    assert len(expected) >= 30


def test_tokenizer_round_trip():
    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    assert len(tok) == 512
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    for text in ["Once upon a time", "Lily saw a big dog. It was happy!"]:
        ids = tok(text).input_ids
        assert ids[0] == 1
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_a_forward_taking_past_key_values_is_refused_by_name(monkeypatch):
    """transformers < 5.24 calls it past_key_values= and would swallow our cache= into **kwargs (seen on a GPU
    machine with 5.17: attention over the new tokens alone, a shape error deep in SDPA)."""
    import pytest
    from torch import nn

    from eaglespec.models import TargetModel, target

    class OldStyle(nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs):
            return input_ids

    class Wrapper(nn.Module):  # torch.compile / PEFT style: passes every keyword through
        def forward(self, *args, **kwargs):
            return args

    with pytest.raises(RuntimeError, match=r"OldStyle.forward takes `past_key_values`.* custom or remote-code"):
        TargetModel(OldStyle())
    monkeypatch.setattr(target, "installed_transformers", lambda: "5.17.0")
    with pytest.raises(RuntimeError, match=r"transformers 5.17.0\): eaglespec needs transformers >= 5.24"):
        TargetModel(OldStyle())
    target.require_cache_argument(Wrapper())  # not refused


def test_the_bundled_fim_code_model_loads_by_name():
    """recipes/code's model ships in the package (bf16, under 20M parameters, issue 37): it resolves by name,
    its tokenizer has Qwen2.5-Coder's FIM tokens, and eaglespec decodes it as transformers does."""
    from eaglespec.data.fim import detect_fim_tokens
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.models import resolve_model_path

    path = resolve_model_path("stdlib-fim-10m")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.dtype == torch.bfloat16 and sum(p.numel() for p in model.parameters()) <= 20_000_000
    fim = detect_fim_tokens(tok)
    assert (fim.family, fim.prefix_id, fim.middle_id, fim.suffix_id, fim.terminator_id) == ("qwen", 1, 2, 3, 0)
    ids = tok("<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>", return_tensors="pt").input_ids
    assert ids[0, 0] == fim.prefix_id
    gen = SpeculativeGenerator.from_pretrained("stdlib-fim-10m", None, dtype="float32")
    expected = model.float().generate(ids, do_sample=False, max_new_tokens=16, pad_token_id=4)[0, ids.shape[1]:]
    got = gen.vanilla_generate(ids, 16).token_ids
    assert got == expected.tolist()[: len(got)] and got


def test_a_bf16_target_on_a_cpu_without_bf16_hardware_says_so_once_at_load(monkeypatch, caplog):
    """On an AVX2-only CPU bf16 matrix products are emulated (5.8x slower than fp32 on the 2-core AMD EPYC that
    found this): loading a bf16 target there names the faster flag; fp32, or a CPU with bf16 hardware, stays quiet."""
    from eaglespec.models import TargetModel, target

    path = bundled_model_path()
    for native, dtype, warned in [(False, torch.bfloat16, True), (False, torch.float32, False),
                                  (True, torch.bfloat16, False)]:
        monkeypatch.setattr(target, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="eaglespec.models.target"):
            TargetModel.from_pretrained(path, dtype=dtype)
        messages = [r.getMessage() for r in caplog.records if "AVX512-BF16" in r.getMessage()]
        assert len(messages) == warned, (native, dtype, messages)
        if warned:
            assert str(path) in messages[0] and "--dtype float32" in messages[0]
    monkeypatch.undo()
    assert target.cpu_has_native_bf16() in (True, False)  # the probe itself runs on any torch
    monkeypatch.setattr(target.platform, "machine", lambda: "aarch64")
    assert target.cpu_has_native_bf16()  # not probed off x86: no warning that might be false
