"""Logit processing vs transformers' warpers (temperature -> top-k -> top-p) and sampling stats."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax.sampling.processing import SamplingParams, process_logits, sample_tokens

torch = pytest.importorskip("torch")
from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


def _hf(logits, t, k, p):
    x = torch.tensor(logits)
    ids = torch.zeros((x.shape[0], 1), dtype=torch.long)
    if t != 1.0:
        x = TemperatureLogitsWarper(t)(ids, x)
    if k:
        x = TopKLogitsWarper(k)(ids, x)
    if p < 1.0:
        x = TopPLogitsWarper(p)(ids, x)
    return x.numpy()


@pytest.mark.parametrize("t,k,p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8),
                                   (0.6, 10, 0.9), (1.3, 3, 0.5), (1.0, 0, 0.05)])
def test_matches_transformers_warpers(t, k, p):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 50)) * 3).astype(np.float32)
    ours = np.asarray(process_logits(jnp.asarray(logits), SamplingParams.make(4, t, k, p)))
    want = _hf(logits, t, k, p)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(ours[finite], want[finite], rtol=1e-6)


def test_top_p_after_top_k_counts_the_ties_top_k_kept():
    """Top-k keeps every token tied with the k-th score (as HF does); top-p must then weigh all of them:
    [5, 3, 3, 3, 0, -1] at k=2, p=0.75 keeps 5 and the 3s (HF keeps 5 and one 3, its sort's pick among
    ties), never 5 alone (the mass of exactly k entries puts 5 at 0.88 > p)."""
    logits = jnp.asarray([[5.0, 3.0, 3.0, 3.0, 0.0, -1.0]])
    kept = np.isfinite(np.asarray(process_logits(logits, SamplingParams.make(1, 1.0, 2, 0.75))))[0]
    assert kept.tolist() == [True, True, True, True, False, False]
    assert np.isfinite(_hf(np.asarray(logits), 1.0, 2, 0.75))[0].sum() == 2


def test_per_row_settings_in_one_call():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 40)) * 2).astype(np.float32)
    sp = SamplingParams(jnp.array([1.0, 0.5, 2.0]), jnp.array([0, 4, 0], jnp.int32), jnp.array([1.0, 1.0, 0.7]))
    ours = np.asarray(process_logits(jnp.asarray(logits), sp))
    for r, (t, k, p) in enumerate([(1.0, 0, 1.0), (0.5, 4, 1.0), (2.0, 0, 0.7)]):
        want = _hf(logits[r:r + 1], t, k, p)[0]
        np.testing.assert_array_equal(np.isinf(ours[r]), np.isinf(want))
        np.testing.assert_allclose(ours[r][np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)


def test_greedy_and_logps():
    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, -1.0]])
    sp = SamplingParams(jnp.array([0.0, 0.0]), jnp.zeros(2, jnp.int32), jnp.ones(2))
    tok, lp, lp_raw = sample_tokens(jax.random.key(0), logits, sp)
    assert tok.tolist() == [1, 0] and lp.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(lp_raw, jax.nn.log_softmax(logits)[jnp.arange(2), tok], rtol=1e-6)


def test_empirical_distribution_matches_processed_probs():
    """Chi-square goodness of fit of 40k draws against softmax(processed scores)."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(1, 12)).astype(np.float32) * 1.5)
    sp = SamplingParams.make(1, 0.8, 8, 0.95)
    probs = np.asarray(jax.nn.softmax(process_logits(logits, sp)))[0]
    n = 40000
    keys = jax.random.split(jax.random.key(3), n)
    toks = jax.vmap(lambda k: sample_tokens(k, logits, sp)[0][0])(keys)
    counts = np.bincount(np.asarray(toks), minlength=12)
    assert counts[probs == 0].sum() == 0  # filtered tokens never drawn
    support = probs > 0
    chi2 = (((counts[support] - n * probs[support]) ** 2) / (n * probs[support])).sum()
    # dof = support - 1 <= 7; the 0.999 quantile of chi2(7) is 24.3.
    assert chi2 < 24.3, (chi2, counts, probs)


def test_draw_across_vocabulary_blocks_matches_the_distribution():
    """The two-level inverse-CDF draw over several 512-token blocks (V not a multiple of 512): chi-square
    of 40k draws, zero-probability tokens (and the padding past V) never drawn, same key -> same token."""
    from lrpo_jax.sampling import processing
    vocab = 1500
    support = np.array([0, 3, 511, 512, 513, 700, 1023, 1024, 1200, 1499])
    logits = np.full((1, vocab), -np.inf, np.float32)
    logits[0, support] = np.random.default_rng(4).normal(size=support.size) * 1.2
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))[0]
    n = 40000
    keys = jax.random.split(jax.random.key(5), n)
    draw = jax.jit(jax.vmap(lambda k: processing._draw(k, jnp.exp(jnp.asarray(logits) - logits.max()))[0]))
    toks = np.asarray(draw(keys))
    counts = np.bincount(toks, minlength=vocab + 1)
    assert toks.max() < vocab and counts[:vocab][probs == 0].sum() == 0
    chi2 = (((counts[support] - n * probs[support]) ** 2) / (n * probs[support])).sum()
    assert chi2 < 27.9, (chi2, counts[support], n * probs[support])  # 0.999 quantile of chi2(9)
    assert np.array_equal(np.asarray(draw(keys[:64])), toks[:64])


def test_logps_under_temperature_and_filters():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(3, 700)).astype(np.float32) * 2)
    sp = SamplingParams(jnp.array([1.0, 0.7, 1.3]), jnp.array([0, 50, 0], jnp.int32), jnp.array([1.0, 1.0, 0.9]))
    tok, lp, lp_raw = sample_tokens(jax.random.key(7), logits, sp)
    rows = jnp.arange(3)
    want = jax.nn.log_softmax(process_logits(logits, sp))[rows, tok]
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lp_raw, jax.nn.log_softmax(logits)[rows, tok], rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.asarray(lp)).all()  # drawn tokens survive the filters
    sp1 = SamplingParams.make(3)  # the RL default: one logsumexp serves both
    tok, lp, lp_raw = sample_tokens(jax.random.key(8), logits, sp1)
    np.testing.assert_allclose(lp, lp_raw, rtol=1e-6)
    np.testing.assert_allclose(lp_raw, jax.nn.log_softmax(logits)[rows, tok], rtol=1e-5, atol=1e-5)


def test_the_draw_never_lands_on_a_zero_weight_token_at_a_block_edge():
    """u right at a block boundary: the in-block remainder comes from the cumulative sum that chose
    the block, so it is never negative (it used to be, landing on the block's first token, here a
    filtered one: token 512)."""
    from unittest import mock

    from lrpo_jax.sampling import processing
    w = np.zeros(1024, np.float32)
    w[0], w[513] = 1.74004, 1.1287763
    total = np.float32(w[0]) + np.float32(w[513])
    edge = np.float32(w[0]) / total
    fracs = np.array([np.nextafter(edge, np.float32(0))] * 1 + [edge] * 1 + [np.nextafter(edge, np.float32(1))],
                     np.float32)
    fracs = np.concatenate([fracs, np.linspace(edge - 1e-6, edge + 1e-6, 61, dtype=np.float32)])
    weights = jnp.asarray(np.broadcast_to(w, (fracs.size, 1024)))
    with mock.patch.object(processing.jax.random, "uniform", lambda key, shape, dtype: jnp.asarray(fracs)[:, None]):
        drawn = np.asarray(processing._draw(jax.random.key(0), weights))
    assert set(drawn.tolist()) <= {0, 513}


def test_a_row_with_top_p_1_is_not_filtered_when_another_row_filters():
    """top_p = 1 means off, as in HF: row 1's tail survives although row 0's top-k makes the batch sort."""
    logits = np.random.default_rng(0).normal(0, 3, (2, 262144)).astype(np.float32)
    logits[:, 7] = 40.0  # a confident step: the fp32 cumsum reaches 1.0 long before the tail
    logits = jnp.asarray(logits)
    params = SamplingParams(jnp.ones(2), jnp.array([50, 0], jnp.int32), jnp.ones(2))
    scores = np.asarray(process_logits(logits, params))
    assert (scores[0] > -1e30).sum() == 50
    np.testing.assert_array_equal(scores[1], np.asarray(logits[1]))
