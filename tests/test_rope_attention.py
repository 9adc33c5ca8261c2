"""RoPE and attention primitives against direct numpy statements of their definitions."""
import numpy as np
import jax.numpy as jnp

from lrpo_jax.models import attention, rope


def test_default_inverse_frequencies():
    inv = rope.inverse_frequencies(8, 10000.0)
    np.testing.assert_allclose(inv, [1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75], rtol=1e-6)
    np.testing.assert_allclose(rope.inverse_frequencies(8, 10000.0, {"rope_type": "linear", "factor": 8.0}),
                               inv / 8, rtol=1e-6)


def test_llama3_scaling_bands():
    s = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192}
    base = rope.inverse_frequencies(64, 500000.0)
    scaled = rope.inverse_frequencies(64, 500000.0, s)
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(scaled[wavelen < 2048], base[wavelen < 2048], rtol=1e-6)
    np.testing.assert_allclose(scaled[wavelen > 8192], base[wavelen > 8192] / 32, rtol=1e-6)
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    sm = (8192 / wavelen[mid] - 1) / 3
    np.testing.assert_allclose(scaled[mid], (1 - sm) * base[mid] / 32 + sm * base[mid], rtol=1e-5)


def test_scaled_frequencies_match_transformers():
    """Against transformers' own RoPE initialisers (the numpy statement above could share a misreading)."""
    import pytest
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for params, head_dim in (({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}, 64),
                             ({"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}, 128)):
        cfg = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=131072,
                                       rope_parameters=params)
        want, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
        ours = rope.inverse_frequencies(head_dim, params["rope_theta"],
                                        {k: v for k, v in params.items() if k != "rope_theta"})
        np.testing.assert_allclose(ours, want.numpy(), rtol=2e-6)


def test_apply_rope_matches_rotation_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [0, 0, 1, 7, 9]])
    inv = rope.inverse_frequencies(8, 100.0)
    out = np.asarray(rope.apply_rope(jnp.asarray(x), jnp.asarray(pos), inv))
    ang = pos[..., None, None] * inv  # [B,T,1,D/2]
    x1, x2 = x[..., :4], x[..., 4:]
    want = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_gqa_attention_matches_numpy_and_masked_rows_are_finite():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    k = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    v = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    vis = rng.random((2, 4, 6)) > 0.4
    vis[1, 2] = False  # a row that sees nothing
    out = np.asarray(attention.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(vis), scale=0.3))
    assert np.isfinite(out).all()
    kk, vv = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)  # head h uses kv head h // 2
    s = np.einsum("bthd,bshd->bhts", q, kk) * 0.3
    s = np.where(vis[:, None], s, -np.inf)
    for b, t in zip(*np.nonzero(~vis.any(-1))):
        s[b, :, t, :] = 0.0  # fully masked row: uniform average
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bhts,bshd->bthd", p, vv), atol=1e-5)
