"""Jitted KV-cache sampler: one prefill, then a `lax.while_loop` decode, state donated.

Design (after the gemma and Tunix samplers): a frozen `SamplerSpec` holds everything that shapes
the program (max new tokens, buckets, EOS ids); per-row temperature/top-k/top-p are arrays, so
tuning never recompiles. Prompts are left-padded to a length bucket and the batch is padded to a
batch bucket, so a run compiles one (prefill, decode) pair per bucket combination.

KV cache memory: 2 (k, v) x layers x batch x (prompt bucket + max_new_tokens) x kv_heads x
head_dim x bytes per element; e.g. Gemma-3-270M fp32 (18 layers, 1 KV head of 256): 36.9 KB per
row and token, so 32 rows x 96 slots = 113 MB.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax import parallel
from lrpo_jax.models import decoder as decoder_lib
from lrpo_jax.sampling import buckets as buckets_lib
from lrpo_jax.sampling.processing import SamplingParams, sample_tokens


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Static sampler settings: changing any of these compiles new programs."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    prompt_buckets: tuple[int, ...] | None = (32, 64, 128, 256, 512, 1024)
    batch_buckets: tuple[int, ...] | None = None
    cache_dtype: str | None = None  # None: the model's compute dtype


@flax.struct.dataclass
class SamplingState:
    step: jax.Array            # i32 scalar: number of tokens generated so far
    tokens: jax.Array          # i32 [B, N] generated tokens, pad after the end
    mask: jax.Array            # i32 [B, N] response mask, EOS included
    logp: jax.Array            # f32 [B, N] log-prob under the sampling distribution
    logp_raw: jax.Array        # f32 [B, N] log-prob under temperature-1 logits
    done: jax.Array            # bool [B]
    next_position: jax.Array   # i32 [B] rope position of the next token
    kv_valid: jax.Array        # i32 [B, S] which cache slots hold real tokens
    cache: Any                 # decoder KV cache
    key: jax.Array
    params: SamplingParams


@dataclasses.dataclass
class SampleOutput:
    tokens: np.ndarray     # [B, N]
    mask: np.ndarray       # [B, N]
    logp: np.ndarray       # [B, N]
    logp_raw: np.ndarray   # [B, N]
    lengths: np.ndarray    # [B]


class Sampler:
    """Generates continuations of left-padded prompts with a split NNX decoder."""

    def __init__(self, graphdef, cfg: decoder_lib.DecoderConfig, spec: SamplerSpec, mesh=None):
        self.graphdef, self.cfg, self.spec, self.mesh = graphdef, cfg, spec, mesh
        self._eos = jnp.asarray(spec.eos_ids or (-1,), jnp.int32)
        self._prefill = jax.jit(self._prefill_fn)
        self._decode = jax.jit(self._decode_fn, donate_argnums=(1,))

    # ---------------------------------------------------------------------------------------
    # Device programs.
    # ---------------------------------------------------------------------------------------
    def _constrain_cache(self, cache):
        if self.mesh is None:
            return cache
        sharding = parallel.kv_cache_sharding(self.mesh, self.cfg.num_kv_heads)
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim == 4 else x, cache)

    def _record(self, state: SamplingState, key, logits) -> SamplingState:
        tok, lp, lp_raw = sample_tokens(key, logits, state.params)
        live = ~state.done
        tok = jnp.where(live, tok, self.spec.pad_id)
        i = state.step
        upd = lambda buf, v: jax.lax.dynamic_update_slice_in_dim(buf, v[:, None].astype(buf.dtype), i, axis=1)
        return state.replace(
            step=i + 1,
            tokens=upd(state.tokens, tok),
            mask=upd(state.mask, live.astype(jnp.int32)),
            logp=upd(state.logp, jnp.where(live, lp, 0.0)),
            logp_raw=upd(state.logp_raw, jnp.where(live, lp_raw, 0.0)),
            done=state.done | jnp.isin(tok, self._eos),
            next_position=state.next_position + 1,
        )

    def _prefill_fn(self, params, tokens, mask, key, sp: SamplingParams) -> SamplingState:
        model = nnx.merge(self.graphdef, params)
        batch, prompt_len = tokens.shape
        n = self.spec.max_new_tokens
        cache = decoder_lib.init_cache(self.cfg, batch, prompt_len + n, self.spec.cache_dtype)
        cache = self._constrain_cache(cache)
        kv_valid = jnp.concatenate([mask.astype(jnp.int32), jnp.zeros((batch, n), jnp.int32)], axis=1)
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
        hidden, cache = model(tokens, positions, kv_valid, cache=cache, cache_index=jnp.int32(0),
                              return_hidden=True)
        logits = model.logits_from_hidden(hidden[:, -1])
        key, sub = jax.random.split(key)
        zeros_f = jnp.zeros((batch, n), jnp.float32)
        state = SamplingState(
            step=jnp.int32(0), tokens=jnp.full((batch, n), self.spec.pad_id, jnp.int32),
            mask=jnp.zeros((batch, n), jnp.int32), logp=zeros_f, logp_raw=zeros_f,
            # Filler rows (no prompt token) start done: they would otherwise keep the decode loop
            # running until they happened to draw an EOS.
            done=mask.sum(-1) == 0, next_position=positions[:, -1] + 1, kv_valid=kv_valid,
            cache=cache, key=key, params=sp)
        return self._record(state, sub, logits)

    def _decode_fn(self, params, state: SamplingState) -> SamplingState:
        model = nnx.merge(self.graphdef, params)
        prompt_len = state.kv_valid.shape[1] - self.spec.max_new_tokens

        def cond(s: SamplingState):
            return (s.step < self.spec.max_new_tokens) & ~jnp.all(s.done)

        def body(s: SamplingState):
            slot = prompt_len + s.step - 1  # cache slot of the last recorded token
            last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)
            kv_valid = jax.lax.dynamic_update_slice_in_dim(
                s.kv_valid, jnp.ones((s.kv_valid.shape[0], 1), jnp.int32), slot, axis=1)
            hidden, cache = model(last, (s.next_position - 1)[:, None], kv_valid, cache=s.cache,
                                  cache_index=slot.astype(jnp.int32), return_hidden=True)
            logits = model.logits_from_hidden(hidden[:, 0])
            key, sub = jax.random.split(s.key)
            s = s.replace(kv_valid=kv_valid, cache=cache, key=key)
            return self._record(s, sub, logits)

        return jax.lax.while_loop(cond, body, state)

    # ---------------------------------------------------------------------------------------
    # Host API.
    # ---------------------------------------------------------------------------------------
    def num_compiles(self) -> int:
        """Programs compiled so far (prefill + decode): flat after warm-up when buckets fit."""
        return self._prefill._cache_size() + self._decode._cache_size()

    def generate_arrays(self, params, tokens, mask, key, sampling: SamplingParams) -> SamplingState:
        """Device-level generate on already padded/bucketed arrays (for use inside pipelines)."""
        return self._decode(params, self._prefill(params, tokens, mask, key, sampling))

    def generate(self, params, prompts: Sequence[Sequence[int]] | np.ndarray, key: jax.Array,
                 sampling: SamplingParams | None = None, prompt_mask: np.ndarray | None = None
                 ) -> SampleOutput:
        """Generates for a list of token-id lists (or a left-padded array + mask).

        Pads the prompt length and the batch to their buckets, runs prefill + decode, and returns
        numpy arrays for the real rows only.
        """
        if prompt_mask is None:
            longest = max(len(p) for p in prompts)
            length = buckets_lib.pick_bucket(longest, self.spec.prompt_buckets, "prompt length")
            tokens, mask = buckets_lib.left_pad(prompts, length, self.spec.pad_id)
        else:
            tokens, mask = np.asarray(prompts, np.int32), np.asarray(prompt_mask, np.int32)
            length = buckets_lib.pick_bucket(tokens.shape[1], self.spec.prompt_buckets, "prompt length")
            grow = length - tokens.shape[1]
            tokens = np.pad(tokens, ((0, 0), (grow, 0)), constant_values=self.spec.pad_id)
            mask = np.pad(mask, ((0, 0), (grow, 0)))
        rows = tokens.shape[0]
        batch = buckets_lib.pick_bucket(rows, self.spec.batch_buckets, "batch size")
        if batch > rows:  # filler rows: empty prompts whose outputs are dropped
            tokens = np.concatenate([tokens, np.full((batch - rows, length), self.spec.pad_id, np.int32)])
            mask = np.concatenate([mask, np.zeros((batch - rows, length), np.int32)])
        sampling = (sampling or SamplingParams.make(rows)).pad_to(batch)
        if self.mesh is not None:
            tokens, mask = parallel.shard_batch((tokens, mask), self.mesh)
            sampling = parallel.shard_batch(sampling, self.mesh)
        state = self.generate_arrays(params, tokens, mask, key, sampling)
        out = parallel.to_host((state.tokens, state.mask, state.logp, state.logp_raw))
        toks, msk, lp, lpr = (np.asarray(x)[:rows] for x in out)
        return SampleOutput(toks, msk, lp, lpr, msk.sum(axis=1))
