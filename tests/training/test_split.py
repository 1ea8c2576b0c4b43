"""The train/test split is decided per sample by its tokens, so adding data never moves a sample across it."""

import random

import pytest
import torch

from eaglespec.training.data import split_indices


def _samples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": torch.tensor([rng.randrange(1000) for _ in range(rng.randrange(3, 30))]),
             "loss_mask": torch.ones(3)} for _ in range(n)]


def _test_ids(samples: list[dict], fraction: float = 0.1, seed: int = 0) -> set[tuple]:
    train, test = split_indices(samples, fraction, seed)
    assert sorted(train + test) == list(range(len(samples)))
    return {tuple(samples[i]["input_ids"].tolist()) for i in test}


def test_adding_data_keeps_every_sample_on_its_side():
    old, new = _samples(400, 1), _samples(300, 2)
    before = _test_ids(old)
    after = _test_ids(old + new)
    old_ids = {tuple(s["input_ids"].tolist()) for s in old}
    assert after & old_ids == before  # no old test sample went to training, no trained one came to test
    assert after - old_ids  # the new data brings test samples of its own


def test_order_does_not_matter_and_duplicates_share_a_side():
    samples = _samples(300, 3)
    shuffled = samples[::-1]
    assert _test_ids(samples) == _test_ids(shuffled)
    doubled = samples + samples
    train, test = split_indices(doubled, 0.1, 0)
    for i in test:
        assert i + (300 if i < 300 else -300) in test


def test_fraction_and_seed():
    samples = _samples(2000, 4)
    _, test = split_indices(samples, 0.05, 0)
    assert 60 <= len(test) <= 140  # binomial(2000, 0.05): mean 100, sd ~10
    assert _test_ids(samples, 0.05, 0) != _test_ids(samples, 0.05, 1)
    assert _test_ids(samples, 0.05, 0) <= _test_ids(samples, 0.2, 0)  # a larger fraction only adds samples


def test_small_sets_keep_one_sample_on_each_side():
    for n in (2, 3, 5):
        samples = _samples(n, n)
        train, test = split_indices(samples, 0.01, 0)
        assert len(test) == 1 and len(train) == n - 1
        train, test = split_indices(samples, 0.99, 0)
        assert len(train) >= 1 and len(test) >= 1
    assert split_indices(_samples(1, 0), 0.5, 0) == ([0], [])
    assert split_indices(_samples(4, 0), 0.0, 0) == ([0, 1, 2, 3], [])


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="fraction in"):
        split_indices(_samples(4, 0), 1.0, 0)
