"""GRPO math with verl 0.5 semantics (model_specs.md §1): advantages, PPO-clip, KL, aggregation.

Shapes: rewards [P, K] (a group is a row, by construction), per-token arrays [B, R] over the
response (R = padded response width) with a 0/1 response mask (EOS included).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")


# ------------------------------------------------------------------------------------------------
# Advantages.
# ------------------------------------------------------------------------------------------------
def group_advantages(rewards: jax.Array, valid: jax.Array | None = None, *, norm_by_std: bool = True,
                     eps: float = 1e-6) -> jax.Array:
    """Outcome advantages per rollout, [P, K] -> [P, K].

    A = (r - mean_g) / (std_g + eps) with the unbiased (N - 1) std (Dr.GRPO: norm_by_std=False gives
    r - mean_g). As in verl, a group with a single member has mean 0 and std 1, so its advantage is
    its raw reward (/(1 + eps)), not 0. `valid` [P, K] drops invalid rollouts (e.g. a failed reward)
    from their group's statistics and gives them advantage 0; a group left with one valid member
    follows the singleton rule.
    """
    v = jnp.ones(rewards.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
    # An invalid rollout's reward may be NaN (a failed reward): zero it, since NaN * 0 is NaN.
    r = jnp.where(v > 0, rewards.astype(jnp.float32), 0.0)
    n = v.sum(-1, keepdims=True)
    mean = (r * v).sum(-1, keepdims=True) / jnp.maximum(n, 1.0)
    var = (jnp.square(r - mean) * v).sum(-1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
    single = n <= 1.0
    mean = jnp.where(single, 0.0, mean)
    std = jnp.where(single, 1.0, jnp.sqrt(var))
    adv = (r - mean) / (std + eps) if norm_by_std else r - mean
    return adv * v


# ------------------------------------------------------------------------------------------------
# Per-token losses.
# ------------------------------------------------------------------------------------------------
def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float = 3.0):
    """Per-token PPO-clip loss with dual clip (verl `compute_policy_loss`, vanilla).

    Returns (loss [B, R], stats) where stats holds per-token indicators for clip fractions and
    the negative log-ratio (verl's `ppo_kl`), to be aggregated with the response mask.
    """
    if clip_c <= 1.0:
        raise ValueError(f"rl.clip_c must be > 1 (dual clip), got {clip_c}")
    adv = advantages if advantages.ndim == logp.ndim else advantages[:, None]
    delta = jnp.clip(logp - old_logp, -20.0, 20.0)
    ratio = jnp.exp(delta)
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = jnp.maximum(l1, l2)
    l3 = -adv * clip_c
    dual = jnp.minimum(l3, clipped)
    loss = jnp.where(adv < 0, dual, clipped)
    stats = {"pg_clipfrac": (l2 > l1).astype(jnp.float32),
             "pg_clipfrac_lower": ((clipped > l3) & (adv < 0)).astype(jnp.float32),
             "ppo_kl": -delta, "ratio": ratio}
    return loss * mask, stats


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "low_var_kl") -> jax.Array:
    """Per-token KL estimators (verl `kl_penalty`): k1 / abs / k2 (mse) / k3 (low_var_kl).

    A '+' suffix (e.g. 'k3+') keeps the forward value and uses the k2 gradient (straight-through).
    """
    straight = kind.endswith("+")
    base = kind[:-1] if straight else kind
    if base not in KL_TYPES:
        raise ValueError(f"unknown rl.kl_type {kind!r}; expected one of {KL_TYPES} (optionally with '+')")
    diff = logp - ref_logp
    if base in ("kl", "k1"):
        value = diff
    elif base == "abs":
        value = jnp.abs(diff)
    elif base in ("mse", "k2"):
        value = 0.5 * jnp.square(diff)
    else:
        d = jnp.clip(ref_logp - logp, -20.0, 20.0)
        value = jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)
    if straight:
        k2 = 0.5 * jnp.square(diff)
        value = k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)
    return value


# ------------------------------------------------------------------------------------------------
# Aggregation.
# ------------------------------------------------------------------------------------------------
def agg_parts(loss: jax.Array, mask: jax.Array, mode: str) -> tuple[jax.Array, jax.Array]:
    """(numerator, denominator) of a verl 0.5 `agg_loss` mode, so micro-batches can be summed
    first and divided once (a global mean) or divided per micro-batch (verl 0.5's behaviour).

    token-mean:               sum(m*l) / (sum(m) + 1e-8)
    seq-mean-token-sum:       sum_b sum_t(m*l) / B            (all B rows, fully masked included)
    seq-mean-token-mean:      sum_b [sum_t(m*l) / sum_t(m)] / B   (a fully masked row counts 0 here;
                              verl would produce 0/0 = NaN for it)
    seq-mean-token-sum-norm:  sum(m*l) / R                    (R = padded response width)
    """
    mask = mask.astype(jnp.float32)
    total = loss * mask
    rows = jnp.float32(loss.shape[0])
    if mode == "token-mean":
        return total.sum(), mask.sum()
    if mode == "seq-mean-token-sum":
        return total.sum(), rows
    if mode == "seq-mean-token-mean":
        per_row = mask.sum(-1)
        return jnp.where(per_row > 0, total.sum(-1) / jnp.maximum(per_row, 1.0), 0.0).sum(), rows
    if mode == "seq-mean-token-sum-norm":
        return total.sum(), jnp.float32(loss.shape[-1])
    raise ValueError(f"unknown rl.loss_agg {mode!r}; expected one of {AGG_MODES}")


def agg_loss(loss: jax.Array, mask: jax.Array, mode: str = "token-mean") -> jax.Array:
    """verl 0.5 `agg_loss` on one batch."""
    num, den = agg_parts(loss, mask, mode)
    return num / (den + 1e-8) if mode == "token-mean" else num / den


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return (x * mask).sum() / (mask.sum() + 1e-8)
