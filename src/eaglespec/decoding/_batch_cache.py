"""Padded batch KV caches with per-row lengths ("right holes"), for `decoding.batch`.

Every cache layer holds keys / values [B, kv, S, hd] with S = the longest row's length. Row b's valid slots are
[0, length_b); slots [length_b, S) are holes: they hold finite stale values (zeros or old tree entries) and
every attention mask built by `decoding.batch` excludes them. Worked example, lengths (5, 3), S 5:

    row 0: k0 k1 k2 k3 k4
    row 1: k0 k1 k2 .  .      <- two holes, never attended

A verification forward appends T tree slots [S, S + T) to every row; `keep_row_positions` then moves each row's
accepted path to [length_b, length_b + m_b) and crops the slot axis to the new longest row.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from eaglespec.decoding.cache import cache_layers, truncate


def prefix_mask(lengths: torch.Tensor, num_slots: int) -> torch.Tensor:
    """lengths [B] -> bool [B, num_slots]: True on each row's valid cache slots."""
    return torch.arange(num_slots, device=lengths.device)[None, :] < lengths[:, None]


def _pad_slots(tensor: torch.Tensor, num_slots: int) -> torch.Tensor:
    """[b, kv, s, hd] -> [b, kv, num_slots, hd], zero holes appended (finite, so masked products stay 0)."""
    missing = num_slots - tensor.shape[-2]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(*tensor.shape[:-2], missing, tensor.shape[-1])], dim=-2)


def append_row(cache: DynamicCache | None, row: DynamicCache) -> DynamicCache:
    """Add one sequence's cache ([1, kv, n, hd] per layer) as the last row of a batch cache (None: empty batch)."""
    if cache is None:
        return row
    batch_layers, row_layers = list(cache_layers(cache)), list(cache_layers(row))
    assert len(batch_layers) == len(row_layers), "caches of one model have the same layers"
    for layer, new in zip(batch_layers, row_layers):
        slots = max(layer.keys.shape[-2], new.keys.shape[-2])
        layer.keys = torch.cat([_pad_slots(layer.keys, slots), _pad_slots(new.keys, slots)], dim=0)
        layer.values = torch.cat([_pad_slots(layer.values, slots), _pad_slots(new.values, slots)], dim=0)
    return cache


def select_rows(cache: DynamicCache, rows: torch.Tensor, num_slots: int) -> None:
    """Keep the batch rows `rows` (ascending indices) and the first `num_slots` slots."""
    for layer in cache_layers(cache):
        layer.keys = layer.keys[rows, :, :num_slots]
        layer.values = layer.values[rows, :, :num_slots]


def keep_row_positions(cache: DynamicCache, lengths: list[int], kept: list[torch.Tensor], base: int) -> None:
    """Per row b: slot lengths[b] + i <- slot base + kept[b][i] (kept ascending), then crop to the longest row.

    Worked example: base S = 6 (the tree was appended at slots 6..), row 0 length 6 keeps tree nodes (0, 2),
    row 1 length 4 keeps (0,): row 0 slots 6, 8 -> 6, 7; row 1 slot 6 -> 4; the cache is cropped to 8 slots.
    Destinations never pass their sources (lengths[b] <= base, kept[b][i] >= i), and the right-hand side is
    gathered before the assignment, so no value is overwritten before it is read.
    """
    device = kept[0].device
    rows = torch.cat([torch.full((k.numel(),), b, device=device) for b, k in enumerate(kept)])
    dst = torch.cat([lengths[b] + torch.arange(k.numel(), device=device) for b, k in enumerate(kept)])
    src = torch.cat(kept).to(torch.long) + base
    for layer in cache_layers(cache):
        layer.keys[rows, :, dst] = layer.keys[rows, :, src]
        layer.values[rows, :, dst] = layer.values[rows, :, src]
    truncate(cache, max(n + k.numel() for n, k in zip(lengths, kept)))
