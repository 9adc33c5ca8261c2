"""The GRPO parameter update as one pure function, independent of the model.

`make_update(logp_fn, optimizer, cfg)` returns `update(params, opt_state, batch) -> (params,
opt_state, metrics)`, meant to be jitted once by the trainer with explicit shardings and donated
params/opt_state. Inside: mini-batches x PPO epochs of optimizer steps, each accumulating
gradients over micro-batches with `lax.scan`. Mini- and micro-batches take rows with a stride
(`parallel.split_rows`: part i is rows i, i + n, ...), so each stays spread over the devices that
hold the batch; which rows share a part is otherwise arbitrary (prompts arrive shuffled).

Aggregation across micro-batches: by default a *global* mean (the loss numerators of all
micro-batches are divided by one denominator computed over the whole mini-batch, as Tunix and the
newer verl engine do), so the result does not depend on how a batch is split. `global_mean=False`
reproduces verl 0.5's formula: each micro-batch's `agg_loss`, averaged over micro-batches (a
micro-batch here spans all devices, where verl averages per-GPU micro-batches; and for
`seq-mean-token-sum-norm` the global mean is n_micro times verl 0.5's loss, since both divide a sum
by the response length).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lrpo_jax import parallel
from lrpo_jax.rl import grpo


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float = 3.0
    kl_coef: float = 0.001
    kl_type: str = "low_var_kl"
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    global_mean: bool = True
    micro_batch: int = 8      # rows per gradient-accumulation step
    mini_batches: int = 1     # optimizer steps per epoch
    ppo_epochs: int = 1

    @property
    def on_policy(self) -> bool:
        return self.mini_batches == 1 and self.ppo_epochs == 1


LogpFn = Callable[[object, dict], tuple[jax.Array, jax.Array | None]]
# Keys of `batch` used here; everything else is passed through to logp_fn.
_LOSS_KEYS = ("response_mask", "advantages", "old_logp", "ref_logp")


def _denominator(mask: jax.Array, mode: str) -> jax.Array:
    """The global denominator of `mode` over a whole mini-batch."""
    if mode == "token-mean":
        return mask.astype(jnp.float32).sum() + 1e-8
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        return jnp.float32(mask.shape[0])
    if mode == "seq-mean-token-sum-norm":
        return jnp.float32(mask.shape[-1])
    raise ValueError(f"unknown rl.loss_agg {mode!r}; expected one of {grpo.AGG_MODES}")


def per_token_loss(logp, ent, batch: dict, cfg: UpdateConfig):
    """Per-token objective and per-token diagnostics for one micro-batch."""
    mask = batch["response_mask"].astype(jnp.float32)
    old = batch.get("old_logp")
    old = jax.lax.stop_gradient(logp) if old is None else old
    pg, stats = grpo.policy_loss(logp, old, batch["advantages"], mask, clip_low=cfg.clip_low,
                                 clip_high=cfg.clip_high, clip_c=cfg.clip_c)
    total = pg
    diag = {"pg_loss": pg, **stats}
    if cfg.kl_coef:
        kl = grpo.kl_penalty(logp, batch["ref_logp"], cfg.kl_type)
        total = total + cfg.kl_coef * kl
        diag["kl"] = kl
    if ent is not None:
        diag["entropy"] = ent
        if cfg.entropy_coef:
            total = total - cfg.entropy_coef * ent
    return total * mask, diag


def make_update(logp_fn: LogpFn, optimizer: optax.GradientTransformation, cfg: UpdateConfig):
    """Builds the pure update function; see the module docstring."""
    if cfg.loss_agg not in grpo.AGG_MODES:
        raise ValueError(f"unknown rl.loss_agg {cfg.loss_agg!r}; expected one of {grpo.AGG_MODES}")

    def micro_loss(params, mb: dict, denom):
        logp, ent = logp_fn(params, mb)
        tok, diag = per_token_loss(logp, ent, mb, cfg)
        mask = mb["response_mask"]
        num, den = grpo.agg_parts(tok, mask, cfg.loss_agg)
        if cfg.global_mean:
            loss = num / denom
        else:
            loss = num / (den + 1e-8 if cfg.loss_agg == "token-mean" else den)
        m = mask.astype(jnp.float32)
        sums = {k: (v * m).sum() for k, v in diag.items()}
        return loss, sums

    def grads_over_micro(params, mini: dict):
        rows = mini["response_mask"].shape[0]
        if rows % cfg.micro_batch:
            raise ValueError(f"mini-batch of {rows} rows is not divisible by rl.micro_batch={cfg.micro_batch}")
        n_micro = rows // cfg.micro_batch
        denom = _denominator(mini["response_mask"], cfg.loss_agg)
        split = jax.tree.map(lambda x: parallel.split_rows(x, n_micro), mini)
        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        zeros = jax.tree.map(jnp.zeros_like, params)

        def step(carry, mb):
            g_acc, l_acc = carry
            (loss, sums), g = grad_fn(params, mb, denom)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss), sums

        (grads, loss), sums = jax.lax.scan(step, (zeros, jnp.float32(0.0)), split)
        if not cfg.global_mean:  # verl 0.5: mean over micro-batches of per-micro-batch losses
            grads = jax.tree.map(lambda g: g / n_micro, grads)
            loss = loss / n_micro
        return loss, grads, jax.tree.map(jnp.sum, sums)

    def update(params, opt_state, batch: dict):
        if not cfg.on_policy and batch.get("old_logp") is None:
            raise ValueError("several mini-batches or PPO epochs need batch['old_logp'] (the rollout policy's "
                             "log-probs); the update cannot recompute them after the first step")
        if cfg.kl_coef and batch.get("ref_logp") is None:
            raise ValueError("rl.kl_coef > 0 needs batch['ref_logp']")
        rows = batch["response_mask"].shape[0]
        if rows % cfg.mini_batches:
            raise ValueError(f"batch of {rows} rows is not divisible by rl.mini_batches={cfg.mini_batches}")
        # loss and grad_norm: means over the optimizer steps (mini-batches x epochs), like the
        # per-token metrics below, not the last step's values.
        metrics = {"skipped_steps": jnp.float32(0.0), "loss": jnp.float32(0.0), "grad_norm": jnp.float32(0.0)}
        steps = cfg.ppo_epochs * cfg.mini_batches
        sums_total = None
        minis = jax.tree.map(lambda x: parallel.split_rows(x, cfg.mini_batches), batch)
        for _ in range(cfg.ppo_epochs):
            for i in range(cfg.mini_batches):
                mini = jax.tree.map(lambda x: x[i], minis)
                loss, grads, sums = grads_over_micro(params, mini)
                gnorm = optax.tree.norm(grads)
                ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
                updates, new_opt = optimizer.update(grads, opt_state, params)
                new_params = optax.apply_updates(params, updates)
                # Non-finite loss or gradient: skip the step; params and moments stay bit-identical.
                params = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, params)
                opt_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_opt, opt_state)
                metrics["skipped_steps"] += (~ok).astype(jnp.float32)
                metrics["loss"] += loss / steps
                metrics["grad_norm"] += gnorm / steps
                sums_total = sums if sums_total is None else jax.tree.map(jnp.add, sums_total, sums)
        tokens = batch["response_mask"].astype(jnp.float32).sum() * cfg.ppo_epochs
        for k, v in sums_total.items():
            metrics[k] = v / jnp.maximum(tokens, 1.0)
        metrics["response_tokens"] = tokens / cfg.ppo_epochs
        return params, opt_state, metrics

    return update


def make_optimizer(lr: float, *, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, grad_clip: float = 1.0, warmup_steps: int = 0,
                   trainable_mask=None) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and an optional linear warm-up (reference: lr 1e-6 constant)."""
    schedule = optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps else lr
    chain = []
    if grad_clip:
        chain.append(optax.clip_by_global_norm(grad_clip))
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    opt = optax.chain(*chain)
    if trainable_mask is not None:
        opt = optax.chain(optax.masked(opt, trainable_mask),
                          optax.masked(optax.set_to_zero(), jax.tree.map(lambda m: not m, trainable_mask)))
    return opt
