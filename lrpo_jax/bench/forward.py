"""Policy forward+backward throughput: our jitted Gemma-3-270M vs transformers PyTorch, same weights.

    python -m lrpo_jax.bench forward [--batch 8] [--length 128] [--micro_batch 4] [--logits_remat 0] [--iters 3]

Line (stdout, JSON):
  forward/gemma3_270m_8x128  tokens/s of one training step's model work: forward over B x T tokens,
                             mean token log-likelihood of the next tokens, backward to every weight.
Ours: log-probs from hidden states chunk by chunk (`rl.logprobs.chunked_logprobs`, the trainer's
path: [B, T, V] logits never exist), `jax.value_and_grad` under `jax.jit`, gradients accumulated
over micro-batches of `--micro_batch` rows with `lax.scan` (the trainer's `rl.micro_batch`; on CPU
512-token chunks keep activations in cache); the logits are kept for the backward pass as in
configs/demo.py (`rl.logits_remat=False`; `--logits_remat 1` recomputes them, the memory-safe default). Peer: Gemma3ForCausalLM on the same HF folder (eager
attention; SDPA is not timed here), log_softmax over the full logits, `.backward()`,
timed both whole-batch and with the same micro-batches (gradient accumulation); the faster of the
two is the peer figure. fp32 on all CPU cores. Context on stderr: compile time, both losses
(they must agree to ~1e-4), achieved FLOP/s (6 x params x tokens + attention) and the fraction of
this machine's fp32 matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax.bench import common
from lrpo_jax.models import hf_import, shipped
from lrpo_jax.rl import logprobs


def matmul_peak(n: int = 2048, iters: int = 5) -> float:
    """fp32 FLOP/s of a large square matmul on this machine (the practical peak)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / common.timeit(lambda: f(a), warmup=2, iters=iters)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench forward", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--logits_remat", type=int, default=0, help="1: recompute the logits in the backward pass")
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)
    b, t, mb = args.batch, args.length, args.micro_batch
    if b % mb:
        raise SystemExit(f"--batch {b} is not a multiple of --micro_batch {mb}")

    import torch
    from transformers import Gemma3ForCausalLM
    torch.set_num_threads(os.cpu_count() or 1)

    folder = shipped.gemma3_270m_dir()
    cfg, params = hf_import.load_decoder(folder)
    graphdef, _ = hf_import.abstract_decoder(cfg)
    tokens = np.random.default_rng(0).integers(10, cfg.vocab_size, (b, t)).astype(np.int32)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    mask = np.ones((b, t), np.int32)

    def loss_fn(p, tok, pos, m):
        model = nnx.merge(graphdef, p)
        hidden, _ = model(tok, pos, m, return_hidden=True)
        lp, _ = logprobs.chunked_logprobs(hidden[:, :-1], model.unembedding(), tok[:, 1:], with_entropy=False,
                                           remat=bool(args.logits_remat))
        return -lp.sum() / (b * (t - 1))  # the whole batch's mean, summed over micro-batches

    def accumulate(p, tok, pos, m):
        chunks = jax.tree.map(lambda x: x.reshape(b // mb, mb, *x.shape[1:]), (tok, pos, m))

        def one(carry, xs):
            loss, grads = jax.value_and_grad(loss_fn)(p, *xs)
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, p))
        return jax.lax.scan(one, zeros, chunks)[0]

    step = jax.jit(accumulate)
    args_j = (params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    t0 = time.perf_counter()
    common.block(step(*args_j))
    first = time.perf_counter() - t0
    ours = common.timeit(lambda: step(*args_j), warmup=0, iters=args.iters)
    ours_loss = float(step(*args_j)[0])

    model = Gemma3ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.train()
    ids = torch.tensor(tokens, dtype=torch.long)

    def peer_step(rows: int):
        model.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, b, rows):  # gradient accumulation, as ours
            chunk = ids[i:i + rows]
            logits = model(input_ids=chunk).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, chunk[:, 1:, None])[..., 0]
            loss = -lp.sum() / (b * (t - 1))
            loss.backward()
            total += loss.item()
        return total

    peer_loss = peer_step(b)
    peer_whole = common.timeit(lambda: peer_step(b), warmup=0, iters=args.iters)
    peer_micro = common.timeit(lambda: peer_step(mb), warmup=1, iters=args.iters)
    peer = min(peer_whole, peer_micro)

    n_params = sum(x.size for x in jax.tree.leaves(params))
    attn = 6 * 2 * cfg.num_layers * b * t * t * cfg.num_heads * cfg.head_dim  # fwd+bwd QK^T and PV
    flops = 6 * n_params * b * t + attn
    peak = matmul_peak()
    common.note(**common.machine(), torch=torch.__version__, compile_seconds=round(first - ours, 2),
                peer_tokens_per_s_whole=round(b * t / peer_whole, 1), peer_tokens_per_s_micro=round(b * t / peer_micro, 1),
                loss_ours=ours_loss, loss_torch=peer_loss, params=n_params,
                ours_gflops=round(flops / ours / 1e9, 1), peer_gflops=round(flops / peer / 1e9, 1),
                peak_gflops=round(peak / 1e9, 1), ours_fraction_of_peak=round(flops / ours / peak, 3))
    common.emit(f"forward/gemma3_270m_{b}x{t}", b * t / ours, b * t / peer, "tokens/s", batch=b, length=t, micro_batch=mb,
                logits_remat=bool(args.logits_remat),
                fraction_of_peak=round(flops / ours / peak, 3))
