"""Noise augmentation of the EAGLE-1 draft's input features (EAGLE_NOTES section 2).

The draft is trained on exact target features but at decoding time it also consumes its own
(slightly wrong) predictions; noise on the input features makes it robust to that. The scale is a
fixed per-element standard: the reference multiplies it by 512 / sequence length, which makes
short sequences noisier than long ones (a bug we do not copy).
"""

from __future__ import annotations

import torch

NOISE_KINDS = ("uniform", "gaussian", "none")


def add_feature_noise(features: torch.Tensor, kind: str, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """features [B, T, H] -> features + noise, noise independent of T.

    uniform: (U[0, 1) - 0.5) * std per element (width `std`, centred);
    gaussian: N(0, std^2) per element; none: unchanged.
    """
    if kind == "none" or std == 0.0:
        return features
    if kind == "uniform":
        noise = torch.rand(features.shape, generator=generator, device=features.device, dtype=features.dtype) - 0.5
    elif kind == "gaussian":
        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
    else:
        raise ValueError(f"noise: expected one of {NOISE_KINDS}, got {kind!r}")
    return features + noise * std
