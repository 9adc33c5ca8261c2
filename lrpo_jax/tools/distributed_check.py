"""Sharded loss+grad across processes: `python -m lrpo_jax.tools.distributed_check --out F.npz`.

Run it once per process under any launcher (launch/local_multiprocess.sh, srun, TPU VM
--worker=all); the batch goes in both ways the code base uses (every process holding the global
batch, as the trainer does after gathering rollouts; and each process feeding only its own rows),
and process 0 writes both losses and the gradient.
Run alone, it computes the same thing on one process: the two results must agree, which is what
tests/test_multiprocess.py checks. It exercises exactly the pieces the trainer relies on: mesh over
all hosts' devices, parameter shardings from logical names, process-local batch assembly, and
jitted value_and_grad with explicit shardings, and agreement on a flag set on one process only
(a preemption signal, `parallel.any_process`).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax import parallel


class TinyPolicy(nnx.Module):
    def __init__(self, vocab=32, d=16, *, rngs):
        init = nnx.initializers.normal(0.5)
        self.embed = nnx.Param(init(rngs.params(), (vocab, d)), out_sharding=("vocab", "embed"),
                               eager_sharding=False)
        self.mlp = nnx.Param(init(rngs.params(), (d, 4 * d)), out_sharding=("embed", "mlp"), eager_sharding=False)
        self.out = nnx.Param(init(rngs.params(), (4 * d, vocab)), out_sharding=("mlp", "vocab"),
                             eager_sharding=False)

    def __call__(self, tokens):
        h = jnp.tanh(self.embed[...][tokens] @ self.mlp[...])
        return h @ self.out[...]


def loss_fn(params, graphdef, tokens, mask):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    m = mask[:, 1:]
    return -(logp * m).sum() / m.sum()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1",
                    help="axis=size list; -1 = the rest of the devices (the default fits any device count)")
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args(argv)
    parallel.maybe_initialize_distributed()
    try:
        mesh = parallel.make_mesh([(k, int(v)) for k, v in (kv.split("=") for kv in args.mesh.split(","))])
    except ValueError as e:
        raise SystemExit(f"--mesh {args.mesh}: {e}") from None
    graphdef, params = nnx.split(TinyPolicy(rngs=nnx.Rngs(0)))
    shardings = parallel.param_shardings(params, mesh)
    params = jax.jit(lambda p: p, out_shardings=shardings)(params)

    # The global batch is a fixed function of the seed; each process keeps only its rows.
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, size=(args.rows, 12)).astype(np.int32)
    mask = (rng.random((args.rows, 12)) > 0.2).astype(np.float32)
    per = args.rows // jax.process_count()
    lo = jax.process_index() * per
    local = parallel.shard_local_batch((tokens[lo:lo + per], mask[lo:lo + per]), mesh)
    batch = parallel.shard_batch((tokens, mask), mesh)

    step = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1,
                   out_shardings=(parallel.replicated(mesh), shardings))
    loss, grads = step(params, graphdef, *batch)
    loss_local, _ = step(params, graphdef, *local)
    # Gather to every host (grads are sharded across processes), then process 0 writes.
    full = jax.jit(lambda g: g, out_shardings=parallel.replicated(mesh))(grads)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(full)}
    # A signal that reached the last process only must stop every process (process 0 writes).
    flags = dict(stop_seen=parallel.any_process(jax.process_index() == jax.process_count() - 1),
                 stop_none=parallel.any_process(False))
    # Rewards scored on each process (here deliberately different) must reach the mesh as process 0's.
    import collections

    from lrpo_jax import trainer
    from lrpo_jax.rewards.combine import RewardResult
    me = float(jax.process_index())
    res = trainer.same_on_every_process(RewardResult(
        reward=np.full(4, me, np.float32), components={"similarity": np.full(4, me, np.float32)},
        predicted_language=np.array(["de"] * 4, object), reasons=collections.Counter(),
        similarity_ok=np.array([True, True, me == 0, True])))
    flags["rewards_differ"] = parallel.any_process(bool(res.reward.any() or res.components["similarity"].any()
                                                        or not res.similarity_ok.all()))
    if jax.process_index() == 0:
        np.savez(args.out, loss=np.asarray(loss), loss_local=np.asarray(loss_local), processes=jax.process_count(),
                 devices=jax.device_count(), **flags, **flat)


if __name__ == "__main__":
    main()
