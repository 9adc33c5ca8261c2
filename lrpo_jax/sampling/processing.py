"""Logit processing for sampling, in transformers' order: temperature -> top-k -> top-p.

All knobs are per-row arrays (traced), so changing them never recompiles. The sort needed by
top-k/top-p is skipped at run time (`lax.cond`) when no row uses them, which is the RL default
(T=1, top-k off, top-p 1): a full-vocabulary sort per decode step would cost more than the step.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@flax.struct.dataclass
class SamplingParams:
    """Per-row sampling settings. temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    temperature: jax.Array  # f32 [B]
    top_k: jax.Array        # i32 [B]
    top_p: jax.Array        # f32 [B]

    @classmethod
    def make(cls, batch: int, temperature=1.0, top_k=0, top_p=1.0) -> "SamplingParams":
        def full(v, dtype):
            return jnp.broadcast_to(jnp.asarray(v, dtype), (batch,))
        return cls(full(temperature, jnp.float32), full(top_k, jnp.int32), full(top_p, jnp.float32))

    def filters(self) -> jax.Array:
        """Traced bool: does any row use top-k or top-p (the only case that needs a vocabulary sort)."""
        return jnp.any(self.top_k > 0) | jnp.any(self.top_p < 1.0)

    def pad_to(self, batch: int) -> "SamplingParams":
        n = batch - self.temperature.shape[0]
        return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], n)]) if n else x, self)


def _filter_sorted(scores: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-k then top-p on [B, V] temperature-scaled scores (one descending sort per row)."""
    vocab = scores.shape[-1]
    desc = -jnp.sort(-scores, axis=-1)
    # top-k: drop scores below the k-th largest (ties at the k-th value are kept, as HF does).
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(desc, (k - 1)[:, None], axis=-1)
    scores = jnp.where(scores < kth, NEG_INF, scores)
    desc = jnp.where(desc < kth, NEG_INF, desc)  # the same survivors, ties included, for top-p's mass
    # top-p on the survivors: HF removes a token when the (ascending) cumulative probability up to
    # and including it is <= 1 - p, i.e. when the mass of strictly larger tokens is >= p; the
    # largest token always survives. In descending order that is an exclusive cumsum < p.
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # top_p >= 1 is "off" (HF skips the warper): fp32 cumsums reach 1 before the tail, which would
    # otherwise drop tail tokens of this row whenever another row of the batch filters.
    keep = (mass_before < top_p[:, None]) | (jnp.arange(vocab)[None, :] == 0) | (top_p[:, None] >= 1)
    # The smallest kept score is the cut-off (ties with it are kept).
    cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scores < cutoff, NEG_INF, scores)


def process_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """fp32 scores of the sampling distribution for logits [B, V]; greedy rows are left unscaled."""
    logits = logits.astype(jnp.float32)
    temp = jnp.where(params.temperature > 0, params.temperature, 1.0)
    scores = logits / temp[:, None]
    return jax.lax.cond(params.filters(), _filter_sorted, lambda s, *_: s, scores, params.top_k, params.top_p)


BLOCK = 512  # vocabulary block of the two-level inverse-CDF draw


def _draw(key: jax.Array, weights: jax.Array) -> jax.Array:
    """One index per row with probability weights[b, i] / sum_i weights[b, i] (weights >= 0, [B, V]).

    Inverse CDF in two levels: a uniform picks a block of BLOCK tokens by the cumulative block sums,
    the remainder picks the token inside it. One uniform per row instead of `jax.random.categorical`'s
    V Gumbel draws: at Gemma's 262k vocabulary that is the difference between ~8 ms and ~0.5 ms per row
    and decode step on CPU, more than the rest of a small model's step. Zero-weight tokens (filtered
    by top-k/top-p) are never drawn: the remainder is >= 0 and the first cumulative sum above it
    never ends on one. Resolution: one fp32 uniform has 2^23 steps (~1.2e-7 of the row's mass), so
    tokens far below that probability are drawn at a multiple of it or not at all; their total mass
    is kept.
    """
    batch, vocab = weights.shape
    block = min(BLOCK, vocab)
    nb = -(-vocab // block)
    w = jnp.pad(weights, ((0, 0), (0, nb * block - vocab))).reshape(batch, nb, block)
    block_sum = w.sum(-1)                                                     # [B, nb]
    cum = jnp.cumsum(block_sum, -1)
    u = jax.random.uniform(key, (batch, 1), jnp.float32) * cum[:, -1:]
    last_block = nb - 1 - jnp.argmax((block_sum > 0)[:, ::-1], -1)           # rounding guard
    b = jnp.minimum(jnp.sum(cum <= u, -1), last_block)                        # [B]
    # The remainder from the previous block's cumulative sum (the one `b` was chosen by), not from
    # cum[b] - block_sum[b]: that difference can round above it, making the remainder negative and
    # landing on the block's first token whatever its weight.
    before = jnp.take_along_axis(jnp.pad(cum, ((0, 0), (1, 0))), b[:, None], -1)[:, 0]
    rest = jnp.maximum(u[:, 0] - before, 0.0)
    inside = jnp.take_along_axis(w, b[:, None, None], 1)[:, 0]               # [B, block]
    last_token = block - 1 - jnp.argmax((inside > 0)[:, ::-1], -1)
    t = jnp.minimum(jnp.sum(jnp.cumsum(inside, -1) <= rest[:, None], -1), last_token)
    return (b * block + t).astype(jnp.int32)


def sample_tokens(key: jax.Array, logits: jax.Array, params: SamplingParams):
    """Draws one token per row. Returns (tokens [B], logp under the sampling distribution [B],
    logp under the raw temperature-1 distribution [B]); greedy rows get sampling logp 0."""
    logits = logits.astype(jnp.float32)
    scores = process_logits(logits, params)
    greedy = params.temperature <= 0
    top = jnp.max(scores, -1, keepdims=True)
    weights = jnp.exp(scores - top)                   # unnormalised probabilities, also the logsumexp
    drawn = _draw(key, weights)
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)
    lse = top[:, 0] + jnp.log(weights.sum(-1))
    pick = lambda x: jnp.take_along_axis(x, tokens[:, None], -1)[:, 0]  # noqa: E731
    logp_sampling = pick(scores) - lse
    # The RL default (T=1, no filter) has scores == logits: reuse their logsumexp.
    same = jnp.all((params.temperature == 1.0) | greedy) & ~params.filters()
    lse_raw = jax.lax.cond(same, lambda: lse, lambda: jax.nn.logsumexp(logits, -1))
    return tokens, jnp.where(greedy, 0.0, logp_sampling), pick(logits) - lse_raw
