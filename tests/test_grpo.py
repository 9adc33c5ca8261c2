"""GRPO math vs numpy restatements of verl 0.5 (core_algos / torch_functional), on random inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax.rl import grpo, logprobs


# ---- numpy restatements of verl 0.5 (written from model_specs.md §1, loop style like verl) ----
def verl_grpo_adv(scores, index, norm=True, eps=1e-6):
    groups = {}
    for i, g in enumerate(index):
        groups.setdefault(g, []).append(scores[i])
    mean, std = {}, {}
    for g, s in groups.items():
        if len(s) == 1:
            mean[g], std[g] = 0.0, 1.0
        else:
            mean[g], std[g] = np.mean(s), np.std(s, ddof=1)
    out = np.zeros_like(scores)
    for i, g in enumerate(index):
        out[i] = (scores[i] - mean[g]) / (std[g] + eps) if norm else scores[i] - mean[g]
    return out


def verl_policy_loss(logp, old, adv, mask, lo, hi, c):
    neg_kl = np.clip(logp - old, -20, 20)
    ratio = np.exp(neg_kl)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - lo, 1 + hi)
    clip1 = np.maximum(l1, l2)
    l3 = -adv * c
    clip2 = np.minimum(l3, clip1)
    loss = np.where(adv < 0, clip2, clip1)
    return loss, (np.sum((l2 > l1) * mask) / (mask.sum() + 1e-8))


def verl_agg(loss, mask, mode):
    if mode == "token-mean":
        return np.sum(loss * mask) / (mask.sum() + 1e-8)
    if mode == "seq-mean-token-sum":
        return np.mean(np.sum(loss * mask, -1))
    if mode == "seq-mean-token-mean":
        return np.mean(np.sum(loss * mask, -1) / np.sum(mask, -1))
    return np.sum(loss * mask) / mask.shape[-1]


def verl_kl(lp, ref, kind):
    if kind in ("kl", "k1"):
        return lp - ref
    if kind == "abs":
        return np.abs(lp - ref)
    if kind in ("mse", "k2"):
        return 0.5 * (lp - ref) ** 2
    kl = np.clip(ref - lp, -20, 20)
    return np.clip(np.exp(kl) - kl - 1, -10, 10)


# ---------------------------------------------------------------------------------------------
def test_worked_examples_from_the_spec():
    adv = grpo.group_advantages(jnp.array([[0.0, 0.5, 0.8, 0.9]]))
    np.testing.assert_allclose(adv[0], [-1.3608935, -0.12371748, 0.61858815, 0.86602324], rtol=1e-6)
    dr = grpo.group_advantages(jnp.array([[0.0, 0.5, 0.8, 0.9]]), norm_by_std=False)
    np.testing.assert_allclose(dr[0], [-0.55, -0.05, 0.25, 0.35], atol=1e-7)
    np.testing.assert_allclose(grpo.group_advantages(jnp.array([[0.7]])), [[0.69999933]], rtol=1e-7)
    lp, ref = jnp.array([-1.0, -2.0, -0.5]), jnp.array([-1.2, -1.5, -0.5])
    np.testing.assert_allclose(grpo.kl_penalty(lp, ref, "k3"), [0.01873075, 0.14872127, 0.0], atol=1e-7)
    np.testing.assert_allclose(grpo.kl_penalty(lp, ref, "k1"), [0.2, -0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(grpo.kl_penalty(lp, ref, "k2"), [0.02, 0.125, 0.0], atol=1e-7)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
@pytest.mark.parametrize("norm", [True, False])
def test_group_advantages_match_verl(k, norm):
    rng = np.random.default_rng(k)
    r = rng.normal(size=(6, k)).astype(np.float32)
    r[2] = 0.5  # all-equal group
    ours = np.asarray(grpo.group_advantages(jnp.asarray(r), norm_by_std=norm))
    want = verl_grpo_adv(r.reshape(-1), np.repeat(np.arange(6), k), norm).reshape(6, k)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    if k > 1:  # all-equal rewards: zero advantage (up to the ulp/eps magnification noted in the spec)
        assert np.abs(ours[2]).max() < 1e-5


def test_invalid_rollouts_leave_their_group():
    r = jnp.array([[1.0, 0.0, 5.0, 3.0], [2.0, 9.0, 9.0, 9.0]])
    valid = jnp.array([[1, 1, 0, 1], [1, 0, 0, 0]])
    adv = np.asarray(grpo.group_advantages(r, valid))
    kept = verl_grpo_adv(np.array([1.0, 0.0, 3.0]), [0, 0, 0])  # the group without the invalid rollout
    np.testing.assert_allclose(adv[0], [kept[0], kept[1], 0.0, kept[2]], rtol=1e-6)
    np.testing.assert_allclose(adv[1], [2.0 / (1 + 1e-6), 0, 0, 0], rtol=1e-6)  # singleton rule
    # a failed reward may be NaN or inf: the invalid rollout must not poison its group
    bad = np.asarray(grpo.group_advantages(r.at[0, 2].set(jnp.nan).at[1, 3].set(jnp.inf), valid))
    np.testing.assert_array_equal(bad, adv)


@pytest.mark.parametrize("lo,hi,c", [(0.2, 0.2, 3.0), (0.2, 0.28, 3.0), (0.1, 0.3, 1.5)])
def test_policy_loss_matches_verl_including_extreme_ratios(lo, hi, c):
    rng = np.random.default_rng(3)
    b, t = 6, 9
    logp = rng.normal(-2, 1, (b, t)).astype(np.float32)
    old = logp + rng.normal(0, 0.5, (b, t)).astype(np.float32)
    old[0, :3] = logp[0, :3] + 40  # ratio clamp at -20
    old[1, :3] = logp[1, :3] - 40  # ratio clamp at +20
    adv = rng.normal(size=(b,)).astype(np.float32)
    mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    ours, stats = grpo.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                   clip_low=lo, clip_high=hi, clip_c=c)
    want, clipfrac = verl_policy_loss(logp, old, adv[:, None], mask, lo, hi, c)
    np.testing.assert_allclose(np.asarray(ours), want * mask, rtol=1e-5)
    np.testing.assert_allclose(grpo.masked_mean(stats["pg_clipfrac"], mask), clipfrac, rtol=1e-6)
    for mode in grpo.AGG_MODES:
        np.testing.assert_allclose(grpo.agg_loss(ours, jnp.asarray(mask), mode), verl_agg(want, mask, mode),
                                   rtol=1e-5, err_msg=mode)
    with pytest.raises(ValueError, match="clip_c must be > 1"):
        grpo.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), clip_c=1.0)


@pytest.mark.parametrize("kind", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"])
def test_kl_estimators_match_verl(kind):
    rng = np.random.default_rng(4)
    lp = rng.normal(-2, 2, (4, 7)).astype(np.float32)
    ref = rng.normal(-2, 2, (4, 7)).astype(np.float32)
    ref[0, 0] = lp[0, 0] + 30  # k3 clamps
    np.testing.assert_allclose(grpo.kl_penalty(jnp.asarray(lp), jnp.asarray(ref), kind), verl_kl(lp, ref, kind),
                               rtol=1e-5, atol=1e-6)


def test_straight_through_kl_has_k2_gradient_and_k3_value():
    lp, ref = jnp.array([-1.0, -2.5]), jnp.array([-1.4, -1.0])
    np.testing.assert_allclose(grpo.kl_penalty(lp, ref, "k3+"), grpo.kl_penalty(lp, ref, "k3"), rtol=1e-6)
    g = jax.grad(lambda x: grpo.kl_penalty(x, ref, "k3+").sum())(lp)
    np.testing.assert_allclose(g, lp - ref, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown rl.kl_type 'k9'"):
        grpo.kl_penalty(lp, ref, "k9")


def test_aggregation_of_fully_masked_rows():
    loss = jnp.ones((3, 4))
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], jnp.float32)
    assert float(grpo.agg_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((2 + 0 + 4) / 3)
    assert float(grpo.agg_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((1 + 0 + 1) / 3)
    assert float(grpo.agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(6 / 4)
    with pytest.raises(ValueError, match="unknown rl.loss_agg"):
        grpo.agg_loss(loss, mask, "mean")


@pytest.mark.parametrize("remat", [True, False])
def test_logprobs_entropy_and_chunked_equivalence(remat):
    rng = np.random.default_rng(5)
    b, t, d, v = 2, 11, 8, 37
    h = jnp.asarray(rng.normal(size=(b, t, d)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(d, v)).astype(np.float32))
    tgt = jnp.asarray(rng.integers(0, v, (b, t)))
    logits = np.asarray(jnp.einsum("btd,dv->btv", h, w)) / 0.7
    ref_lp = logits[np.arange(b)[:, None], np.arange(t)[None], np.asarray(tgt)] - np.log(np.exp(logits).sum(-1))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ref_ent = -(p * np.log(p)).sum(-1)
    full = logprobs.token_logprobs(jnp.einsum("btd,dv->btv", h, w), tgt, 0.7)
    np.testing.assert_allclose(full, ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logprobs.entropy(jnp.einsum("btd,dv->btv", h, w), 0.7), ref_ent, rtol=1e-5, atol=1e-5)
    lp, ent = logprobs.chunked_logprobs(h, w, tgt, temperature=0.7, chunk=4, remat=remat)  # 11 = 4 + 4 + 3 (padded)
    np.testing.assert_allclose(lp, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)
    loss_full = lambda h, w: logprobs.token_logprobs(jnp.einsum("btd,dv->btv", h, w), tgt).sum()  # noqa: E731
    loss_chunk = lambda h, w: logprobs.chunked_logprobs(h, w, tgt, chunk=4, remat=remat)[0].sum()  # noqa: E731
    for a, c in zip(jax.grad(loss_full, (0, 1))(h, w), jax.grad(loss_chunk, (0, 1))(h, w)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
    # What remat changes is what the backward pass keeps: the recompute shows up in the jaxpr.
    text = str(jax.make_jaxpr(jax.grad(loss_chunk, (0, 1)))(h, w))
    assert ("remat" in text or "checkpoint" in text) == remat
