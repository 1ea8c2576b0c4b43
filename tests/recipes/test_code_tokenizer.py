"""The code recipe's tokenizer: FIM tokens are single ids that decode back, AutoTokenizer loads it, eaglespec
detects it as the Qwen family, and its text pipeline is Qwen2's (what llama.cpp's "qwen2" pre-tokenizer does)."""

from __future__ import annotations

import json

from codefim.tokenizer import END_OF_TEXT, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS
from eaglespec.data.fim import detect_fim_tokens
from paths import shared_path


def test_special_tokens_are_single_ids_that_decode_back(code_tokenizer):
    for index, token in enumerate(SPECIAL_TOKENS):
        ids = code_tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [index], token
        assert code_tokenizer.decode(ids) == token


def test_fim_tokens_stay_whole_inside_code(code_tokenizer):
    text = f"{FIM_PREFIX}def f(x):\n    {FIM_SUFFIX}\n    return y{FIM_MIDDLE}y = x + 1{END_OF_TEXT}"
    ids = code_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [1, 3, 2, 0]  # prefix, suffix, middle, end of text
    assert code_tokenizer.decode(ids) == text


def test_roles_and_detection(code_tokenizer):
    assert code_tokenizer.eos_token == END_OF_TEXT and code_tokenizer.pad_token == FIM_PAD
    assert code_tokenizer.bos_token_id is None
    fim = detect_fim_tokens(code_tokenizer)
    assert (fim.family, fim.prefix_id, fim.suffix_id, fim.middle_id, fim.terminator_id, fim.bos_id) == \
        ("qwen", 1, 3, 2, 0, None)


def test_code_round_trips_byte_exactly(code_tokenizer):
    text = "\tif x:\r\n        return 'é' * 3  # ünïcode ✓\n\n\n"
    assert code_tokenizer.decode(code_tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_text_pipeline_is_qwen2s(code_tokenizer):
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))
    ours, theirs = (json.loads(t.backend_tokenizer.to_str()) for t in (code_tokenizer, qwen))
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert ours[part] == theirs[part], part
    text = "def  f(x):\n\t return x**2 + 10  # 3.14\n"
    assert code_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text) == \
        qwen.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
