"""Rotary position embeddings (NeoX "rotate half" layout, as in HF Llama/Qwen2/Gemma3/ModernBERT)."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: tuple | dict | None = None) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2] (float32), with optional HF rope scaling.

    `scaling` is HF's `rope_scaling` (dict or a tuple of (key, value) pairs): `linear` divides every
    frequency by `factor`; `llama3` divides long wavelengths by `factor`, keeps short ones and blends in
    between (Llama 3.1+). Computed in numpy float64 then cast, so it is a compile-time constant.
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    s = dict(scaling or {})
    kind = s.get("rope_type", s.get("type", "default"))
    if kind in ("default", None):
        pass
    elif kind == "linear":
        inv = inv / float(s["factor"])
    elif kind == "llama3":
        factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_ctx = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen > lo_wavelen, inv / factor, np.where(wavelen < hi_wavelen, inv, blended))
    else:
        raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")
    return inv.astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotates x [B, T, H, D] by positions [B, T]; angles in fp32, result in x.dtype."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
