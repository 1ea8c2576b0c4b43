"""Hand-computed examples for the padded batch caches (rows of different lengths, holes, accepted paths)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from eaglespec.decoding._batch_cache import append_row, keep_row_positions, prefix_mask, select_rows
from eaglespec.decoding.cache import new_cache


def _row_cache(values: list[float]) -> DynamicCache:
    """A two-layer cache of one row whose slot i holds values[i] (keys) and values[i] + 100 (values)."""
    cache = new_cache()
    keys = torch.tensor(values).view(1, 1, -1, 1).expand(1, 2, -1, 3).contiguous()
    cache.update(keys, keys + 100, 0)
    cache.update(keys * 2, keys * 2 + 100, 1)
    return cache


def _slots(cache, layer: int = 0) -> list[list[float]]:
    return cache.layers[layer].keys[:, 0, :, 0].tolist()


def test_append_row_pads_with_zero_holes():
    cache = append_row(None, _row_cache([1, 2, 3]))
    cache = append_row(cache, _row_cache([4, 5, 6, 7, 8]))
    cache = append_row(cache, _row_cache([9]))
    assert _slots(cache) == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]]
    assert _slots(cache, 1)[1] == [8, 10, 12, 14, 16]
    assert cache.layers[0].values[2, 1, :, 0].tolist() == [109, 0, 0, 0, 0]
    assert prefix_mask(torch.tensor([3, 5, 1]), 5).int().tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_keep_row_positions_moves_each_rows_path_into_place():
    # the docstring's example: base 6; row 0 (length 6) keeps tree nodes (0, 2), row 1 (length 4) keeps (0,)
    cache = append_row(None, _row_cache([0, 1, 2, 3, 4, 5, 60, 61, 62]))
    cache = append_row(cache, _row_cache([10, 11, 12, 13, 0, 0, 70, 71, 72]))
    keep_row_positions(cache, [6, 4], [torch.tensor([0, 2]), torch.tensor([0])], base=6)
    assert cache.get_seq_length() == 8
    assert _slots(cache)[0] == [0, 1, 2, 3, 4, 5, 60, 62]
    assert _slots(cache)[1][:5] == [10, 11, 12, 13, 70]  # slots 5.. are holes
    assert _slots(cache, 1)[0][-2:] == [120, 124]
    assert cache.layers[1].values[1, 1, 4, 0].tolist() == 240


def test_select_rows_drops_rows_and_crops_slots():
    cache = append_row(None, _row_cache([1, 2, 3, 4]))
    cache = append_row(cache, _row_cache([5, 6]))
    cache = append_row(cache, _row_cache([7, 8, 9]))
    select_rows(cache, torch.tensor([1, 2]), 3)
    assert _slots(cache) == [[5, 6, 0], [7, 8, 9]]
    assert _slots(cache, 1) == [[10, 12, 0], [14, 16, 18]]
