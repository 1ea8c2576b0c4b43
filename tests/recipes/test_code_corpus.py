"""The code recipe's corpus: test and site-packages folders and generated codec tables left out, and a
held-out split by a seeded hash of the relative path that is the same on every run and does not depend on
which other files exist."""

from __future__ import annotations

import pytest

from codefim.corpus import is_heldout, load_corpus, source_paths


def test_excluded_folders_are_left_out(tiny_source):
    names = {p.relative_to(tiny_source).as_posix() for p in source_paths(tiny_source)}
    assert len(names) == 25  # 24 modules and one generated codec table (left out when read)
    assert not any(part in n.split("/") for n in names for part in ("test", "tests", "site-packages", "idle_test"))


def test_generated_codec_tables_are_left_out(tiny_source):
    corpus = load_corpus(tiny_source, seed=0, heldout_fraction=0.25)
    assert len(corpus.train) + len(corpus.heldout) == 24
    assert "beta/cp0.py" in {p.relative_to(tiny_source).as_posix() for p in source_paths(tiny_source)}


def test_split_is_deterministic_and_seeded(tiny_source):
    first, again = (load_corpus(tiny_source, seed=0, heldout_fraction=0.25) for _ in range(2))
    assert [f.relative_path for f in first.heldout] == [f.relative_path for f in again.heldout]
    assert first.heldout and first.train
    other = load_corpus(tiny_source, seed=1, heldout_fraction=0.25)
    assert {f.relative_path for f in other.heldout} != {f.relative_path for f in first.heldout}


def test_a_files_side_does_not_depend_on_the_others(tiny_source):
    corpus = load_corpus(tiny_source, seed=0, heldout_fraction=0.25)
    for f in corpus.heldout:
        assert is_heldout(f.relative_path, 0, 0.25)
    for f in corpus.train:
        assert not is_heldout(f.relative_path, 0, 0.25)
    paths = [f"pkg/m{i}.py" for i in range(2000)]
    share = sum(is_heldout(p, 0, 0.05) for p in paths) / len(paths)
    assert 0.03 < share < 0.07  # the hash spreads paths at about the asked fraction


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_corpus(tmp_path / "missing", 0, 0.1)
    with pytest.raises(ValueError, match="no readable"):
        load_corpus(tmp_path, 0, 0.1)
