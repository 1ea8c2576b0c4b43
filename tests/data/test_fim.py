"""Acceptance 1 (FIM): decoded trained tokens == middle + terminator for every FIM family available, in
the layout the model sees at inference; detection of DeepSeek / CodeLlama tokens; bad FIM input."""

from __future__ import annotations

import gzip
import json

import pytest

from eaglespec.data.fim import detect_fim_tokens, encode_fim, fim_prompt_ids
from eaglespec.data.formats import FimExample, InvalidRecord, Record, parse_fim
from paths import shared_path


def _humaneval_infill(n: int) -> list[FimExample]:
    path = shared_path("data", "fim", "HumanEval-SingleLineInfilling.jsonl.gz")
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for _, line in zip(range(n), f)]
    return [parse_fim(Record(f"{path}:{i + 1}", r["task_id"], r)) for i, r in enumerate(lines)]


# (tokenizer folder, family, terminator, first tokens of the sample in the family's own layout)
FIM_FAMILIES = [
    ("qwen2.5", "qwen", "<|endoftext|>", ["<|fim_prefix|>"]),
    ("starcoder", "starcoder", "<|endoftext|>", ["<fim_prefix>"]),
    ("mistral-v3-fim", "mistral", "</s>", ["<s>", "[SUFFIX]"]),
]


@pytest.mark.parametrize("name,family,terminator,head", FIM_FAMILIES, ids=[f[0] for f in FIM_FAMILIES])
def test_fim_middle_plus_terminator_is_exactly_what_is_trained(real_tokenizer, runs_of, decode_of, name, family,
                                                               terminator, head):
    tokenizer = real_tokenizer(name)
    fim = detect_fim_tokens(tokenizer)
    assert fim.family == family
    for example in _humaneval_infill(12):
        ids, mask = encode_fim(tokenizer, example, fim)
        assert tokenizer.convert_ids_to_tokens(ids[: len(head)]) == head
        (run,) = runs_of(ids, mask)  # one trained span, at the end
        assert mask[-len(run):] == [1] * len(run)
        assert decode_of(tokenizer, run) == example.middle + terminator
        assert ids[: len(ids) - len(run)] == fim_prompt_ids(tokenizer, example.prefix, example.suffix, fim)


def test_mistral_layout_is_suffix_first_without_middle_token(real_tokenizer):
    tokenizer = real_tokenizer("mistral-v3-fim")
    example = FimExample("m", "t", "def f(x):\n", "    return x + 1\n", "\nprint(f(2))\n")
    ids, mask = encode_fim(tokenizer, example, detect_fim_tokens(tokenizer))
    seg = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    # mistral-common: [BOS] [SUFFIX] suffix [PREFIX] prefix, then the model writes the middle and </s>
    assert ids == [1, 13, *seg(example.suffix), 11, *seg(example.prefix), *seg(example.middle), 2]
    assert 12 not in ids  # [MIDDLE] is not part of the layout


def test_psm_and_spm_layouts(real_tokenizer):
    tokenizer = real_tokenizer("starcoder")
    example = FimExample("s", "t", "def add(a, b):\n", "    return a + b", "\n\nprint(add(1, 2))\n")
    seg = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    P, M, S, EOS = 1, 2, 3, 0  # <fim_prefix>, <fim_middle>, <fim_suffix>, <|endoftext|>
    psm, _ = encode_fim(tokenizer, example, detect_fim_tokens(tokenizer))
    assert psm == [P, *seg(example.prefix), S, *seg(example.suffix), M, *seg(example.middle), EOS]
    spm, mask = encode_fim(tokenizer, example, detect_fim_tokens(tokenizer, order="spm"))
    assert spm == [P, S, *seg(example.suffix), M, *seg(example.prefix), *seg(example.middle), EOS]
    assert sum(mask) == len(seg(example.middle)) + 1


@pytest.mark.parametrize("family,tokens,terminator", [
    ("deepseek", ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"], None),
    ("codellama", ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], "▁<EOT>"),
])
def test_detection_of_families_without_a_tokenizer_here(real_tokenizer, runs_of, family, tokens, terminator):
    tokenizer = real_tokenizer("llama2", fresh=True)  # a tokenizer with no FIM tokens, extended with them
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    fim = detect_fim_tokens(tokenizer)
    ids_of = tokenizer.convert_tokens_to_ids
    assert fim.family == family and fim.order == "psm"
    assert (fim.prefix_id, fim.suffix_id, fim.middle_id) == tuple(ids_of(tokens[:3]))
    assert fim.terminator_id == (ids_of(terminator) if terminator else tokenizer.eos_token_id)
    example = FimExample("d", "t", "x = ", "compute()", "\nprint(x)")
    ids, mask = encode_fim(tokenizer, example, fim)
    assert ids[:2] == [tokenizer.bos_token_id, fim.prefix_id]
    (run,) = runs_of(ids, mask)
    assert run == tokenizer("compute()", add_special_tokens=False)["input_ids"] + [fim.terminator_id]


def test_fim_tokens_override(real_tokenizer):
    tokenizer = real_tokenizer("qwen2.5")
    fim = detect_fim_tokens(tokenizer, override="<|fim_prefix|>,<|fim_suffix|>,<|fim_middle|>,<|im_end|>")
    assert fim.family == "custom" and fim.terminator_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(ValueError, match=r"--fim-tokens: \['<nope>'\] not in the vocabulary"):
        detect_fim_tokens(tokenizer, override="<nope>,<|fim_suffix|>,<|fim_middle|>")
    with pytest.raises(ValueError, match="expected PREFIX,SUFFIX,MIDDLE"):
        detect_fim_tokens(tokenizer, override="<|fim_prefix|>,<|fim_suffix|>")


def test_tokenizer_without_fim_tokens(real_tokenizer):
    with pytest.raises(ValueError, match=r"tokenizer llama2 has no FIM tokens of a known family .*"
                                         r"--fim-tokens PREFIX,SUFFIX,MIDDLE\[,TERMINATOR\]"):
        detect_fim_tokens(real_tokenizer("llama2"), tokenizer_name="tokenizer llama2")


def test_bad_fim_records():
    with pytest.raises(InvalidRecord, match=r"f.jsonl:3: empty middle") as e:
        parse_fim(Record("f.jsonl:3", "a", {"prefix": "a", "middle": "", "suffix": "b"}))
    assert e.value.reason == "empty_middle"
    with pytest.raises(InvalidRecord, match=r"f.jsonl:4: record has no field 'suffix'"):
        parse_fim(Record("f.jsonl:4", "a", {"prefix": "a", "middle": "m"}))
    with pytest.raises(InvalidRecord, match=r"f.jsonl:5: not a FIM record.*got fields \['code'\]"):
        parse_fim(Record("f.jsonl:5", "a", {"code": "x"}))
    humaneval = parse_fim(Record("h", "t", {"prompt": "p", "canonical_solution": "m", "suffix": "s"}))
    assert (humaneval.prefix, humaneval.middle, humaneval.suffix) == ("p", "m", "s")
