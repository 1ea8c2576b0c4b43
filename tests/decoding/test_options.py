"""`GenerationOptions`: one typed, checked set of generation settings; each bad value is named with its field."""

from __future__ import annotations

import pytest

from eaglespec.decoding import GenerationOptions, InvalidOption, generation_options


@pytest.mark.parametrize("field, bad", [("max_new_tokens", 0), ("max_new_tokens", 2.5), ("temperature", -1.0),
                                        ("temperature", "0.5"), ("top_p", 0.0), ("top_p", float("nan")),
                                        ("top_k", -1), ("top_k", 1.5), ("seed", "7"), ("eos_token_id", ["2"]),
                                        ("stop", [""])])
def test_a_bad_value_is_rejected_naming_its_field_and_value(field, bad):
    with pytest.raises(InvalidOption) as e:
        GenerationOptions(**{field: bad})
    assert e.value.field == field
    shown = repr(bad[0] if isinstance(bad, list) else bad)
    assert field in str(e.value) and shown in str(e.value)


def test_values_are_normalised_once():
    options = GenerationOptions(max_new_tokens=4.0, temperature=1, top_k=3.0, eos_token_id=2, stop="END")
    assert (options.max_new_tokens, options.temperature, options.top_k) == (4, 1.0, 3)
    assert type(options.max_new_tokens) is int and type(options.temperature) is float
    assert options.eos_token_id == (2,) and options.stop == ("END",)
    assert GenerationOptions(eos_token_id=[]).eos_token_id == ()  # no EOS at all, unlike None (the model's)


def test_keywords_of_a_python_call_become_one_options_object():
    assert generation_options() == GenerationOptions()
    assert generation_options(max_new_tokens=None, temperature=None) == GenerationOptions()  # None: the default
    base = GenerationOptions(max_new_tokens=9, seed=1)
    assert generation_options(base) is base
    assert generation_options(base, temperature=0.5) == GenerationOptions(max_new_tokens=9, temperature=0.5, seed=1)
    with pytest.raises(TypeError, match="max_tokens"):
        generation_options(max_tokens=3)
