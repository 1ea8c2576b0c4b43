"""KV-cache surgery for transformers 5 `DynamicCache`s: keep exactly the accepted path, drop the rest.

Both caches are created without a config, so every layer is a plain `DynamicLayer` ([B, kv, S, hd] keys and
values that grow by concatenation); sliding windows are enforced through the attention masks instead
(see `request.context_length`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def new_cache() -> DynamicCache:
    """An empty cache whose layers are all full `DynamicLayer`s (created lazily by the first forward)."""
    return DynamicCache()


def cache_layers(cache: DynamicCache):
    """The initialised, non-empty layers of `cache`; ValueError on any layer other than a plain DynamicLayer."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise ValueError(
                f"cache layer {i} is a {type(layer).__name__}; speculative decoding gathers and crops plain "
                "DynamicLayer caches only (create the cache with eaglespec.decoding.cache.new_cache())"
            )
        if layer.is_initialized and layer.keys.numel():
            yield layer


def keep_positions(cache: DynamicCache, start: int, positions: torch.Tensor) -> None:
    """Keep slots [0, start) plus slots start + positions (ascending), packed contiguously; drop the rest.

    Worked example: start 10, tree of 6 slots 10..15, accepted path nodes (0, 2, 5) -> slots 10, 12, 15
    move to 10, 11, 12 and the cache ends at 13.
    """
    index = positions.to(torch.long) + start  # [m]
    end = start + index.numel()
    for layer in cache_layers(cache):
        layer.keys[:, :, start:end] = layer.keys[:, :, index]
        layer.values[:, :, start:end] = layer.values[:, :, index]
        layer.keys = layer.keys[:, :, :end]
        layer.values = layer.values[:, :, :end]


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop every slot at or after `length`."""
    for layer in cache_layers(cache):
        layer.keys = layer.keys[:, :, :length]
        layer.values = layer.values[:, :, :length]
