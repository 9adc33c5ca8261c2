"""One configurable decoder for the Qwen2/2.5, Llama 3.x and Gemma 3 (text) families.

The three families differ only in a handful of switches (model_specs.md §4), so they share one
NNX implementation:

| switch                    | Qwen2          | Llama 3         | Gemma 3                          |
|---------------------------|----------------|-----------------|----------------------------------|
| q/k/v bias                | yes            | no              | no                               |
| RMSNorm                   | w * cast(norm) | w * cast(norm)  | cast(norm * (1 + w)), fp32 inside |
| embedding scale           | -              | -               | sqrt(hidden), cast to param dtype |
| QK-norm before RoPE       | -              | -               | yes                              |
| sandwich (post) norms     | -              | -               | yes                              |
| MLP activation            | SiLU           | SiLU            | GELU (tanh)                      |
| local/global layers       | -              | -               | sliding window + local rope θ    |
| rope scaling              | -              | llama3          | linear (4b global layers)        |

Use it functionally: `graphdef, params = nnx.split(Decoder(cfg, rngs=...))` once; inside jitted
code `nnx.merge(graphdef, params)(...)`. Every weight carries logical axis names for sharding.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from lrpo_jax.models import rope
from lrpo_jax.models.attention import attention

FAMILIES = ("qwen2", "llama", "gemma3")


def _generation_eos(path: pathlib.Path) -> tuple[int, ...]:
    """EOS ids of a checkpoint's generation_config.json (an int or a list), () without one."""
    if not path.is_file():
        return ()
    eos = json.loads(path.read_text()).get("eos_token_id")
    ids = eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {eos!r}")
    return tuple(ids)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Static (hashable) description of a decoder; see the module table for family switches."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    local_rope_theta: float | None = None
    rope_scaling: tuple | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = True
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    query_pre_attn_scalar: float | None = None
    max_position_embeddings: int | None = None  # carried to exports (the model's own context length)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"DecoderConfig.family={self.family!r}; expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        types = self.layer_types or ("global",) * self.num_layers
        if len(types) != self.num_layers or any(t not in ("global", "local") for t in types):
            raise ValueError(f"layer_types must list 'global'/'local' for each of the {self.num_layers} layers, "
                             f"got {self.layer_types}")
        if "local" in types and not self.sliding_window:
            raise ValueError("local layers need a sliding_window")
        object.__setattr__(self, "layer_types", tuple(types))

    @property
    def is_gemma(self) -> bool:
        return self.family == "gemma3"

    @classmethod
    def from_hf(cls, config: dict | str | os.PathLike, **overrides) -> "DecoderConfig":
        """Builds a config from an HF `config.json` (path, folder or dict).

        Supports model_type qwen2, llama, gemma3_text and gemma3 (a multimodal checkpoint's nested
        `text_config` is loaded as the text model: the reference silently skipped routing for it).
        Reads both transformers 5 (`rope_parameters`) and older (`rope_theta`, `rope_scaling`,
        `rope_local_base_freq`, `sliding_window_pattern`) spellings.
        """
        gen_eos = ()
        if not isinstance(config, dict):
            path = pathlib.Path(config)
            path = path / "config.json" if path.is_dir() else path
            config = json.loads(path.read_text())
            gen_eos = _generation_eos(path.parent / "generation_config.json")
        kind = config.get("model_type")
        if kind == "gemma3":
            if "text_config" not in config:
                raise ValueError("gemma3 config.json has no text_config")
            # Multimodal checkpoints list only what differs from Gemma3TextConfig's defaults (gemma-3-4b-it
            # omits the heads, vocabulary and RoPE bases: filled below). Token ids the text part lacks
            # come from the top level.
            text = dict(config["text_config"])
            for key in ("eos_token_id", "bos_token_id", "pad_token_id", "tie_word_embeddings"):
                if key not in text and key in config:
                    text[key] = config[key]
            config = {**text, "model_type": "gemma3_text"}
            kind = "gemma3_text"
        family = {"qwen2": "qwen2", "llama": "llama", "gemma3_text": "gemma3"}.get(kind)
        if family is None:
            raise ValueError(f"unsupported model_type {kind!r}; supported: qwen2, llama, gemma3_text, gemma3")
        # Keys a config.json omits take transformers' defaults, as HF fills them when it loads the
        # checkpoint (Gemma 3: rope_theta 1e6, head_dim 256, query_pre_attn_scalar 256; Qwen2: untied).
        import transformers
        hf_class = getattr(transformers, {"qwen2": "Qwen2Config", "llama": "LlamaConfig",
                                          "gemma3": "Gemma3TextConfig"}[family])
        config = {**hf_class(**{k: v for k, v in config.items() if k != "model_type"}).to_dict(), "model_type": kind}
        if config.get("attn_logit_softcapping") or config.get("final_logit_softcapping"):
            raise ValueError("logit soft-capping (Gemma 2) is not supported")
        # Architecture switches this decoder does not implement: refused, never computed differently.
        act_key, act = ("hidden_activation", "gelu_pytorch_tanh") if family == "gemma3" else ("hidden_act", "silu")
        unsupported = {act_key: (config.get(act_key) or act, act), "use_bidirectional_attention": (
            bool(config.get("use_bidirectional_attention")), False)}
        if family == "llama":
            unsupported.update(attention_bias=(bool(config.get("attention_bias")), False),
                               mlp_bias=(bool(config.get("mlp_bias")), False))
        bad = {k: got for k, (got, want) in unsupported.items() if got != want}
        if bad:
            raise ValueError(f"{kind} config {bad} is not supported by this decoder (supported: "
                             f"{ {k: want for k, (_, want) in unsupported.items()} })")
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        n = config["num_hidden_layers"]
        rp = config.get("rope_parameters") or {}
        global_rp = rp.get("full_attention", rp) if isinstance(rp, dict) else {}
        local_rp = rp.get("sliding_attention", {}) if isinstance(rp, dict) else {}
        theta = global_rp.get("rope_theta", config.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in global_rp.items() if k != "rope_theta"} or config.get("rope_scaling") or None
        if scaling and "type" in scaling:  # the pre-4.45 spelling: one key, so export cannot write both
            scaling = {("rope_type" if k == "type" else k): v for k, v in scaling.items()}
        if scaling and scaling.get("rope_type") in (None, "default"):
            scaling = None
        local_theta, window, types = None, None, ()
        if family == "gemma3":
            if local_rp.get("rope_type", "default") != "default":
                raise ValueError(f"gemma3 RoPE scaling on the sliding-window layers ({local_rp}) is not supported; "
                                 f"only the global layers' rope_parameters may scale")
            local_theta = local_rp.get("rope_theta", config.get("rope_local_base_freq", 10000.0))
            window = config.get("sliding_window")
            hf_types = config.get("layer_types")
            if not hf_types:
                pattern = config.get("sliding_window_pattern", 6)
                hf_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
            types = tuple("local" if t == "sliding_attention" else "global" for t in hf_types)
        elif family == "qwen2" and config.get("use_sliding_window"):
            raise ValueError("Qwen2 use_sliding_window=true is not supported (Qwen2.5 checkpoints set it false)")
        eos = config.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        pad = config.get("pad_token_id")
        pad = pad if pad is not None else (eos[0] if eos else 0)
        # generate() stops at generation_config.json's EOS list (Qwen2.5-Instruct: <|im_end|> and
        # <|endoftext|>, where config.json names only one): stop at both lists' ids.
        eos = eos + tuple(i for i in gen_eos if i not in eos)
        fields = dict(
            family=family, vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_layers=n, num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads), head_dim=head_dim, rope_theta=float(theta),
            local_rope_theta=None if local_theta is None else float(local_theta),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            qkv_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
            tie_embeddings=config.get("tie_word_embeddings", family == "gemma3"),  # transformers' defaults
            sliding_window=window, layer_types=types,
            query_pre_attn_scalar=config.get("query_pre_attn_scalar") if family == "gemma3" else None,
            max_position_embeddings=config.get("max_position_embeddings"),
            bos_token_id=config.get("bos_token_id"), eos_token_ids=eos,
            pad_token_id=pad,
        )
        fields.update(overrides)
        return cls(**fields)


# ------------------------------------------------------------------------------------------------
# Layers.
# ------------------------------------------------------------------------------------------------
def _param(rngs: nnx.Rngs, shape, names, cfg: DecoderConfig, init=None):
    init = init or jax.nn.initializers.normal(0.02)
    value = init(rngs.params(), shape, jnp.dtype(cfg.param_dtype))
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: DecoderConfig, rngs: nnx.Rngs):
        # Gemma stores w with the norm applying (1 + w), so "identity" is w = 0.
        init = jax.nn.initializers.zeros if cfg.is_gemma else jax.nn.initializers.ones
        self.scale = _param(rngs, (dim,), ("norm",), cfg, init)
        self.eps, self.gemma = cfg.rms_norm_eps, cfg.is_gemma

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.gemma:  # fp32 throughout, cast after the weight (HF Gemma3RMSNorm)
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)  # cast before (HF Llama)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer_type: str, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg, self.local = cfg, layer_type == "local"
        self.q = _param(rngs, (d, h, hd), ("embed", "q_heads", "head_dim"), cfg)
        self.k = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg)
        self.v = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg)
        self.o = _param(rngs, (h, hd, d), ("q_heads", "head_dim", "embed"), cfg)
        if cfg.qkv_bias:
            zeros = jax.nn.initializers.zeros
            self.q_bias = _param(rngs, (h, hd), ("q_heads", "head_dim"), cfg, zeros)
            self.k_bias = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), cfg, zeros)
            self.v_bias = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), cfg, zeros)
        if cfg.is_gemma:
            self.q_norm = RMSNorm(hd, cfg, rngs)
            self.k_norm = RMSNorm(hd, cfg, rngs)
        theta = cfg.local_rope_theta if self.local and cfg.local_rope_theta else cfg.rope_theta
        scaling = None if self.local else cfg.rope_scaling
        # A tuple, not an array: nnx would treat an array attribute as state.
        self.inv_freq = tuple(rope.inverse_frequencies(hd, theta, dict(scaling) if scaling else None).tolist())
        scalar = cfg.query_pre_attn_scalar or hd
        self.scale = float(scalar) ** -0.5

    def __call__(self, x, positions, visible, cache_kv=None, cache_index=None):
        dt = x.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.q[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", x, self.k[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", x, self.v[...].astype(dt))
        if self.cfg.qkv_bias:
            q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
        if self.cfg.is_gemma:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        q = rope.apply_rope(q, positions, inv_freq)
        k = rope.apply_rope(k, positions, inv_freq)
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            new_kv, k, v = (ck, cv), ck.astype(dt), cv.astype(dt)
        out = attention(q, k, v, visible, scale=self.scale)
        return jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt)), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), cfg)
        self.gemma = cfg.is_gemma

    def __call__(self, x):
        dt = x.dtype
        g = x @ self.gate[...].astype(dt)
        act = jax.nn.gelu(g, approximate=True) if self.gemma else jax.nn.silu(g)
        return (act * (x @ self.up[...].astype(dt))) @ self.down[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer_type: str, rngs: nnx.Rngs):
        self.local = layer_type == "local"
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg, rngs)
        self.attn = Attention(cfg, layer_type, rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg, rngs)
        self.mlp = MLP(cfg, rngs)
        self.sandwich = cfg.is_gemma
        if cfg.is_gemma:
            self.attn_post_norm = RMSNorm(cfg.hidden_size, cfg, rngs)
            self.mlp_post_norm = RMSNorm(cfg.hidden_size, cfg, rngs)

    def __call__(self, h, positions, visible, cache_kv=None, cache_index=None):
        a, new_kv = self.attn(self.attn_norm(h), positions, visible, cache_kv, cache_index)
        h = h + (self.attn_post_norm(a) if self.sandwich else a)
        m = self.mlp(self.mlp_norm(h))
        return h + (self.mlp_post_norm(m) if self.sandwich else m), new_kv


@flax.struct.dataclass
class KVCache:
    """Per-layer keys and values, each [B, S, KV, head_dim]."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)))


class Decoder(nnx.Module):
    """Causal LM; see the module docstring and `__call__` for the masking contract."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
        self.layers = nnx.List([Block(cfg, t, rngs) for t in cfg.layer_types])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)

    def __call__(self, tokens, positions, attn_mask, *, cache: KVCache | None = None, cache_index=None,
                 return_hidden: bool = False):
        """tokens, positions: int32 [B, T] -> (fp32 logits [B, T, V] or hidden [B, T, D], cache).

        Without a cache, key j is visible to query i iff j <= i, attn_mask[b, j] and (local layers)
        i - j < sliding_window. With a cache the T tokens occupy slots cache_index.. and attn_mask
        [B, S] marks valid slots; slot indices play the role of i and j.
        """
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        t = tokens.shape[1]
        h = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
        if cfg.is_gemma:  # HF casts sqrt(hidden) to the weight dtype (bf16: 25.3 -> 25.25)
            h = h * jnp.asarray(cfg.hidden_size ** 0.5, jnp.dtype(cfg.param_dtype)).astype(dt)
        start = jnp.int32(0) if cache is None else cache_index
        q_slot = start + jnp.arange(t, dtype=jnp.int32)
        k_slot = jnp.arange(attn_mask.shape[1], dtype=jnp.int32)
        dist = q_slot[:, None] - k_slot[None, :]
        causal = (dist >= 0)[None] & (attn_mask[:, None, :] > 0)
        local = causal & (dist < (cfg.sliding_window or 1))[None]
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            visible = local if layer.local else causal
            kv = None if cache is None else (cache.k[i], cache.v[i])
            if cfg.remat:
                h, out_kv = nnx.remat(lambda blk, *a: blk(*a))(layer, h, positions, visible, kv, start)
            else:
                h, out_kv = layer(h, positions, visible, kv, start)
            if out_kv is not None:
                new_k.append(out_kv[0])
                new_v.append(out_kv[1])
        h = self.final_norm(h)
        new_cache = None if cache is None else KVCache(k=tuple(new_k), v=tuple(new_v))
        return (h if return_hidden else self.logits_from_hidden(h)), new_cache

    def unembedding(self) -> jax.Array:
        """The [D, V] output projection (the transposed embedding when tied)."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def logits_from_hidden(self, hidden) -> jax.Array:
        w = self.embed[...] if self.cfg.tie_embeddings else self.lm_head[...].T
        return jnp.einsum("...d,vd->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
