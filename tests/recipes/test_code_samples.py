"""The code recipe's training rows: the FIM transformation in PSM and SPM layout (eaglespec's own layouts),
chunking at line starts, packing, over-long samples skipped and counted, seeded determinism."""

from __future__ import annotations

import random

import numpy as np

from codefim.samples import IGNORE_INDEX, FimLayouts, build_rows, chunk_file, encode_fim_sample, fim_split, pack


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_fim_split_cuts_text_in_three_in_order():
    rng = random.Random(0)
    for _ in range(200):
        prefix, middle, suffix = fim_split("def f(x):\n    return x\n", rng)
        assert prefix + middle + suffix == "def f(x):\n    return x\n"


def test_psm_and_spm_layouts(code_tokenizer):
    layouts = FimLayouts.of(code_tokenizer, fim_rate=1.0, spm_rate=0.5)
    prefix, middle, suffix = "def f(x):\n    ", "y = x + 1", "\n    return y\n"
    P, M, S, EOS = 1, 2, 3, 0
    pre, mid, suf = (_ids(code_tokenizer, t) for t in (prefix, middle, suffix))
    assert encode_fim_sample(code_tokenizer, prefix, middle, suffix, layouts.psm) == \
        [P, *pre, S, *suf, M, *mid, EOS]
    assert encode_fim_sample(code_tokenizer, prefix, middle, suffix, layouts.spm) == \
        [P, S, *suf, M, *pre, *mid, EOS]


def test_about_half_the_samples_are_fim_in_both_orders(code_tokenizer, tiny_files):
    chunks = [f.text for f in tiny_files] * 10
    rows = build_rows(code_tokenizer, chunks, FimLayouts.of(code_tokenizer, 0.5, 0.5), 2048, random.Random(0))
    assert rows.samples == len(chunks) and rows.skipped == 0
    assert 0.4 < rows.fim_samples / rows.samples < 0.6
    firsts = [row[i + 1] for row in rows.input_ids.tolist() for i in range(len(row) - 1) if row[i] == 1]
    assert {3} < set(firsts)  # SPM rows put the suffix token right after the prefix token, PSM rows code


def test_chunks_start_lines_and_fit(code_tokenizer, tiny_files):
    text = tiny_files[0].text
    chunks = chunk_file(code_tokenizer, text, max_tokens=40)
    assert "".join(chunks) == text and len(chunks) > 3
    assert all(len(_ids(code_tokenizer, c)) <= 40 for c in chunks)
    assert all(c.endswith("\n") for c in chunks)  # every cut at a line start (no line here is 40 tokens long)


def test_pack_matches_the_worked_example():
    input_ids, labels = pack([[5, 6, 0], [7, 8, 9, 0], [10, 0]], seq_len=8, pad_id=4)
    assert input_ids.tolist() == [[5, 6, 0, 7, 8, 9, 0, 4], [10, 0, 4, 4, 4, 4, 4, 4]]
    assert labels.tolist()[0] == [5, 6, 0, 7, 8, 9, 0, IGNORE_INDEX]
    assert (labels[1, 2:] == IGNORE_INDEX).all()


def test_too_long_samples_are_skipped_and_counted(code_tokenizer, tiny_files):
    rows = build_rows(code_tokenizer, [f.text for f in tiny_files[:4]], FimLayouts.of(code_tokenizer, 0.5, 0.5),
                      seq_len=16, rng=random.Random(0))
    assert rows.skipped == 4 and rows.samples == 0


def test_rows_are_seeded(code_tokenizer, tiny_files):
    chunks = [f.text for f in tiny_files]
    layouts = FimLayouts.of(code_tokenizer, 0.5, 0.5)
    a, b, c = (build_rows(code_tokenizer, chunks, layouts, 1024, random.Random(seed)) for seed in (0, 0, 1))
    assert np.array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, c.input_ids)


def test_draft_fim_records_cut_whole_lines_and_keep_the_chunk():
    """recipes/code/fim_samples.py: the middle is 1..max_lines whole lines, not blank-only, after a non-empty
    prefix, and prefix + middle + suffix is the chunk; seeded."""
    from fim_samples import line_middle

    chunk = "import os\n\n\ndef scale(values, factor=2):\n    result = []\n    for value in values:\n" \
            "        result.append(value * factor)\n\n    return result\n"
    for seed in range(20):
        prefix, middle, suffix = line_middle(chunk, random.Random(seed), 4)
        assert prefix + middle + suffix == chunk
        assert middle.strip() and middle.endswith("\n") and 1 <= middle.count("\n") <= 4
        assert prefix.endswith("\n")  # never empty: some code before the middle
    assert line_middle(chunk, random.Random(1), 4) == line_middle(chunk, random.Random(1), 4)
    assert line_middle("\n\n", random.Random(0), 4) is None and line_middle("x = 1\n", random.Random(0), 4) is None


def test_infilling_exact_match_compares_up_to_whitespace_and_single_lines_by_their_first_line():
    from infilling_eval import matches

    assert matches("    return x + 1\n", "    return x + 1\n", single_line=True)
    assert matches("return x + 1\n    print(x)\n", "    return x + 1\n", single_line=True)
    assert not matches("return x + 1\n    print(x)\n", "    return x + 1\n", single_line=False)
    assert not matches("return x - 1", "return x + 1", single_line=True)
