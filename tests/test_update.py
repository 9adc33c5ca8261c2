"""The model-agnostic GRPO update on a toy softmax policy: accumulation, aggregation, NaN guard."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrpo_jax.rl import grpo, logprobs
from lrpo_jax.rl.update import UpdateConfig, make_optimizer, make_update, per_token_loss

V, D, B, R = 11, 6, 8, 5


def toy_logp(params, batch):
    """A linear softmax policy over V tokens from per-token features."""
    logits = jnp.einsum("brd,dv->brv", batch["features"], params["w"]) + params["b"]
    return logprobs.token_logprobs(logits, batch["tokens"]), logprobs.entropy(logits)


@pytest.fixture()
def setup():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(D, V)).astype(np.float32)), "b": jnp.zeros(V)}
    mask = np.ones((B, R), np.float32)
    mask[1, 2:] = 0
    mask[5, 1:] = 0
    batch = {"features": jnp.asarray(rng.normal(size=(B, R, D)).astype(np.float32)),
             "tokens": jnp.asarray(rng.integers(0, V, (B, R))),
             "response_mask": jnp.asarray(mask),
             "advantages": jnp.asarray(rng.normal(size=(B,)).astype(np.float32))}
    lp, _ = toy_logp(params, batch)
    batch["ref_logp"] = lp + jnp.asarray(rng.normal(0, 0.1, (B, R)).astype(np.float32))
    return params, batch


def _grads(cfg, params, batch):
    upd = make_update(toy_logp, optax.sgd(1.0), cfg)
    new, _, metrics = jax.jit(upd)(params, optax.sgd(1.0).init(params), batch)
    return jax.tree.map(lambda a, b: a - b, params, new), metrics  # sgd(1): params - new = grad


@pytest.mark.parametrize("mode", grpo.AGG_MODES)
def test_global_mean_is_independent_of_micro_batching(setup, mode):
    params, batch = setup
    one, m1 = _grads(UpdateConfig(micro_batch=B, loss_agg=mode, kl_coef=0.01), params, batch)
    four, m4 = _grads(UpdateConfig(micro_batch=2, loss_agg=mode, kl_coef=0.01), params, batch)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)


def test_full_batch_loss_equals_verl_formula(setup):
    params, batch = setup
    cfg = UpdateConfig(micro_batch=B, kl_coef=0.05, entropy_coef=0.01)
    grads, metrics = _grads(cfg, params, batch)

    def direct(p):
        lp, ent = toy_logp(p, batch)
        pg, _ = grpo.policy_loss(lp, jax.lax.stop_gradient(lp), batch["advantages"], batch["response_mask"])
        kl = grpo.kl_penalty(lp, batch["ref_logp"], "low_var_kl")
        m = batch["response_mask"]
        return grpo.agg_loss(pg, m) + 0.05 * grpo.agg_loss(kl, m) - 0.01 * grpo.agg_loss(ent, m)

    loss, want = jax.value_and_grad(direct)(params)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(metrics["ratio"], 1.0, rtol=1e-6)  # on-policy
    assert float(metrics["pg_clipfrac"]) == 0.0


def test_verl05_per_micro_batch_mean(setup):
    params, batch = setup
    grads, _ = _grads(UpdateConfig(micro_batch=2, kl_coef=0.0, global_mean=False), params, batch)

    def per_micro(p):
        losses = []
        for i in range(B // 2):  # micro-batch i: rows i, i + B/2 (strided, see parallel.split_rows)
            mb = jax.tree.map(lambda x: x[i::B // 2], batch)
            lp, _ = toy_logp(p, mb)
            pg, _ = grpo.policy_loss(lp, jax.lax.stop_gradient(lp), mb["advantages"], mb["response_mask"])
            losses.append(grpo.agg_loss(pg, mb["response_mask"]))
        return sum(losses) / len(losses)

    want = jax.grad(per_micro)(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    glob, _ = _grads(UpdateConfig(micro_batch=2, kl_coef=0.0), params, batch)
    assert not np.allclose(glob["w"], grads["w"])  # uneven masks: the two semantics differ


def test_nan_guard_keeps_params_and_moments_bit_identical(setup):
    params, batch = setup
    opt = make_optimizer(1e-2, grad_clip=1.0)
    state = opt.init(params)
    upd = jax.jit(make_update(toy_logp, opt, UpdateConfig(micro_batch=4)))
    p1, s1, m1 = upd(params, state, batch)
    assert float(m1["skipped_steps"]) == 0.0 and not np.array_equal(p1["w"], params["w"])
    bad = dict(batch, advantages=batch["advantages"].at[3].set(jnp.nan))
    p2, s2, m2 = upd(params, state, bad)
    assert float(m2["skipped_steps"]) == 1.0
    for a, b in zip(jax.tree.leaves((p2, s2)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)


def test_several_epochs_need_old_logp_and_clip_binds(setup):
    params, batch = setup
    cfg = UpdateConfig(micro_batch=4, mini_batches=2, ppo_epochs=2, kl_coef=0.0)
    upd = make_update(toy_logp, optax.sgd(5.0), cfg)
    with pytest.raises(ValueError, match="need batch\\['old_logp'\\]"):
        upd(params, optax.sgd(5.0).init(params), batch)
    lp, _ = toy_logp(params, batch)
    _, _, metrics = jax.jit(upd)(params, optax.sgd(5.0).init(params), dict(batch, old_logp=lp))
    assert float(metrics["pg_clipfrac"]) > 0  # later steps are off-policy with a big lr


def test_loss_and_grad_norm_metrics_average_the_optimizer_steps(setup):
    """With several mini-batches, `loss`/`grad_norm` are the means over the optimizer steps (lr 0:
    every step sees the same params), not the last mini-batch's values."""
    params, batch = setup
    lp, _ = toy_logp(params, batch)
    batch = dict(batch, old_logp=lp)
    run = lambda cfg, b: jax.jit(make_update(toy_logp, optax.sgd(0.0), cfg))(params, optax.sgd(0.0).init(params), b)[2]  # noqa: E731
    both = run(UpdateConfig(micro_batch=4, mini_batches=2), batch)
    halves = [run(UpdateConfig(micro_batch=4), jax.tree.map(lambda x: x[i::2], batch)) for i in (0, 1)]  # strided
    for key in ("loss", "grad_norm"):
        assert float(halves[0][key]) != pytest.approx(float(halves[1][key]), rel=1e-3), key
        np.testing.assert_allclose(both[key], (halves[0][key] + halves[1][key]) / 2, rtol=1e-5, err_msg=key)


def test_per_token_loss_masks_padding(setup):
    params, batch = setup
    lp, ent = toy_logp(params, batch)
    tok, diag = per_token_loss(lp, ent, batch, UpdateConfig())
    assert float(jnp.abs(tok * (1 - batch["response_mask"])).max()) == 0.0
    assert set(diag) >= {"pg_loss", "kl", "entropy", "pg_clipfrac", "ratio"}


def test_micro_and_mini_batches_stay_spread_over_the_devices():
    """On a mesh sharding 64 rows over 8 devices, each micro-batch of 16 (and each of 2 mini-batches)
    must take 2 rows from every device: no all-gather of the batch, a quarter of the batch's work per
    device per micro-step. Contiguous micro-batches would sit on 2 devices each and XLA would gather
    the whole batch everywhere (the compiled program had all-gathers and 4x the flops)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lrpo_jax import parallel, policy
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = parallel.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
    rng = np.random.default_rng(0)
    rows = 64
    params = {"w": jnp.asarray(rng.normal(size=(D, V)).astype(np.float32)), "b": jnp.zeros(V)}
    batch = {"features": rng.normal(size=(rows, R, D)).astype(np.float32),
             "tokens": rng.integers(0, V, (rows, R)).astype(np.int32),
             "response_mask": np.ones((rows, R), np.float32),
             "advantages": rng.normal(size=(rows,)).astype(np.float32)}
    batch["old_logp"] = np.asarray(toy_logp(params, batch)[0])
    rep = NamedSharding(mesh, P())
    sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
    params = jax.device_put(params, rep)
    opt = optax.sgd(0.1)
    cfg = UpdateConfig(micro_batch=16, mini_batches=2, kl_coef=0.0)
    upd = jax.jit(make_update(toy_logp, opt, cfg))
    hlo = upd.lower(params, jax.device_put(opt.init(params), rep), sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    # Same values as on one device, with the rows in the same strided parts.
    one = jax.jit(make_update(toy_logp, opt, cfg))(jax.device_get(params), opt.init(jax.device_get(params)), batch)
    new = upd(params, opt.init(params), sharded)
    np.testing.assert_allclose(np.asarray(new[0]["w"]), np.asarray(one[0]["w"]), rtol=1e-5, atol=1e-6)

    def logp_fn(p, b):
        return toy_logp(p, dict(b, features=b["tokens"][..., None] * jnp.ones(D)))

    fwd = jax.jit(policy.batched_logp(logp_fn, micro_batch=16))
    xs = {"tokens": sharded["tokens"], "positions": sharded["tokens"], "attn_mask": sharded["tokens"]}
    assert "all-gather" not in fwd.lower(params, xs).compile().as_text()
    np.testing.assert_allclose(np.asarray(fwd(params, xs)), np.asarray(logp_fn(params, xs)[0]), rtol=1e-6)
