"""Draft vocabulary (counts, top-Vd, coverage, cache keyed by tokenizer + data), show-sample and the CLI."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
import torch

from eaglespec.cli import main
from eaglespec.data import build_draft_vocab, prepare_dataset
from eaglespec.data.visualize import format_sample, mask_runs
from eaglespec.models import bundled_model_path

FEATURES = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "loss_mask": datasets.Sequence(datasets.Value("int8"))})


def _dataset(rows):
    return datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "loss_mask": [r[1] for r in rows]},
                                      features=FEATURES)


def test_counts_top_k_and_coverage_against_a_plain_count():
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(30):
        n = int(torch.randint(5, 40, (1,), generator=generator))
        ids = (torch.randint(0, 50, (n,), generator=generator) ** 2 % 97).tolist()  # skewed frequencies
        rows.append((ids, torch.randint(0, 2, (n,), generator=generator).tolist()))
    counter = Counter(t for ids, mask in rows for t, m in zip(ids, mask) if m)
    vocab = build_draft_vocab(_dataset(rows), vocab_size=100, draft_vocab_size=10)
    assert vocab.counts.tolist() == [counter.get(i, 0) for i in range(100)]
    expected = sorted(sorted(counter, key=lambda t: (-counter[t], t))[:10])
    assert vocab.used_tokens.tolist() == expected and vocab.used_tokens.dtype == torch.int64
    assert vocab.coverage == pytest.approx(sum(counter[t] for t in expected) / sum(counter.values()))
    # fewer distinct trained tokens than Vd: the rest are filled with the lowest unused ids
    small = build_draft_vocab(_dataset([([5, 7, 7], [1, 1, 1])]), vocab_size=10, draft_vocab_size=4)
    assert small.used_tokens.tolist() == [0, 1, 5, 7] and small.coverage == 1.0
    # a selected view counts only its rows
    assert int(build_draft_vocab(_dataset(rows).select([0]), 100, 10).counts.sum()) == sum(rows[0][1])


def test_bad_sizes_and_foreign_ids():
    data = _dataset([([5, 300], [1, 1])])
    with pytest.raises(ValueError, match=r"draft vocabulary size must be in 1\.\.10"):
        build_draft_vocab(data, 10, 11)
    with pytest.raises(ValueError, match="holds token id 300 but the vocabulary size is 100"):
        build_draft_vocab(data, 100, 4)
    with pytest.raises(ValueError, match="no trained tokens"):
        build_draft_vocab(_dataset([([1, 2], [0, 0])]), 10, 4)


def _prepare(tmp_path, name, texts):
    inp = tmp_path / f"{name}.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare_dataset(inp, str(bundled_model_path()), tmp_path / name, data_format="text")
    return tmp_path / name


def test_cache_is_keyed_by_data_and_sizes(tmp_path):
    cache = tmp_path / "cache"
    a = _prepare(tmp_path, "a", ["Once upon a time there was a cat.", "The dog ran."])
    b = _prepare(tmp_path, "b", ["Lily liked the big red ball.", "Tom was sad."])
    first = build_draft_vocab(a, 512, 16, cache_dir=cache)
    assert len(list(cache.glob("draft_vocab-*.pt"))) == 1
    again = build_draft_vocab(a, 512, 16, cache_dir=cache)
    assert torch.equal(first.used_tokens, again.used_tokens) and first.coverage == again.coverage
    other = build_draft_vocab(b, 512, 16, cache_dir=cache)  # another dataset: never the cached mapping
    assert torch.equal(other.counts, build_draft_vocab(b, 512, 16).counts)
    assert not torch.equal(other.counts, first.counts)
    build_draft_vocab(a, 512, 32, cache_dir=cache)
    assert len(list(cache.glob("draft_vocab-*.pt"))) == 3
    for path in cache.glob("draft_vocab-*.pt"):  # a damaged cache entry is rebuilt
        path.write_bytes(b"garbage")
    assert torch.equal(build_draft_vocab(a, 512, 16, cache_dir=cache).used_tokens, first.used_tokens)


def test_format_sample_plain_and_colour():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    ids = tokenizer("Once upon a time, there was")["input_ids"] + [2]
    mask = [0] * 5 + [1] * (len(ids) - 5)
    assert mask_runs(ids, mask)[0] == (False, ids[:5])
    assert format_sample(tokenizer, ids, mask, color=False) == "<s> Once upon a time[[, there was</s>]]"
    coloured = format_sample(tokenizer, ids, mask, color=True)
    assert "\x1b[30;42m, there was</s>\x1b[0m" in coloured and "[[" not in coloured
    with pytest.raises(ValueError, match="input_ids has 2 tokens but loss_mask has 1"):
        mask_runs([1, 2], [1])


def test_cli_prepare_show_sample_and_draft_vocab(tmp_path, capsys):
    inp = tmp_path / "t.jsonl"
    inp.write_text(json.dumps({"prompt": "Once upon a time", "completion": ", there was"}) + "\n")
    out = tmp_path / "out"
    args = ["prepare", "--data-format", "text", "--input", str(inp), "--tokenizer", "stories260K",
            "--output", str(out)]
    assert main(args) == 0
    assert json.loads((out / "stats.json").read_text())["kept"] == 1
    assert main(args) == 1
    assert "eaglespec prepare: error:" in capsys.readouterr().err
    assert main(["show-sample", "--data", str(out), "--plain"]) == 0
    shown = capsys.readouterr().out
    assert "4 trained in 1 span(s)" in shown and "[[, there was</s>]]" in shown
    assert main(["show-sample", "--data", str(out), "--index", "3"]) == 1
    assert "--index 3: the dataset has rows 0..0" in capsys.readouterr().err
    assert main(["draft-vocab", "--data", str(out), "--vocab-size", "512", "--draft-vocab-size", "2",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "coverage: 0.5000 of 4 trained tokens" in capsys.readouterr().out
