"""Masked dot-product attention shared by the decoder and encoder families."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Large finite negative instead of -inf: a query row with no visible key (a pad row) then yields a
# uniform, finite average instead of NaN, and NaN never leaks into gradients.
_MASKED = -1e30


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, visible: jnp.ndarray, *, scale: float,
              softcap: float | None = None) -> jnp.ndarray:
    """Grouped-query attention.

    q: [B, T, H, D]; k, v: [B, S, KV, D] with H a multiple of KV; visible: bool [B, T, S] (or
    broadcastable). Scores and softmax in fp32; returns [B, T, H, D] in q.dtype.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(visible[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)
