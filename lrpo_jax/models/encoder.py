"""Bidirectional text encoders for the similarity reward: ModernBERT / mmBERT and XLM-R / BERT (e5).

Both families reproduce HF transformers' `ModernBertModel` / `XLMRobertaModel` / `BertModel`
`last_hidden_state` (sdpa/eager path, right padding) on real tokens; model_specs.md §3 has the details.

`mask` is a [B, T] integer array: 0 marks padding, any k > 0 marks a token of sequence k of its row.
A plain padded batch uses 0/1; several sequences may share a row (packing: 1, 1, 2, 2, 2, 0, ...),
in which case each attends only to its own tokens and numbers its positions from its own start,
as HF's unpadded (flash-attention) ModernBERT path does. Outputs at padding positions are finite
but unspecified.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax.models import attention as attention_lib
from lrpo_jax.models import rope

FAMILIES = ("modernbert", "xlmr")
LAYER_TYPES = ("global", "local")
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# HF model_type -> (family, first position id relative to pad_token_id + 1: RoBERTa offsets, BERT does not)
_HF_MODEL_TYPES = {"modernbert": ("modernbert", None), "xlm-roberta": ("xlmr", True),
                   "roberta": ("xlmr", True), "bert": ("xlmr", False)}
E5_PREFIXES = {"query": "query: ", "passage": "passage: "}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Static encoder hyper-parameters (hashable; Python values only).

    family 'modernbert': pre-LN blocks, fused Wqkv, GeGLU, RoPE, optional bias-free LayerNorm,
      global layers (full attention, `global_rope_theta`) and local ones (|i - j| <= local_window // 2,
      `local_rope_theta`) as listed in `layer_types`; embedding norm and final norm.
    family 'xlmr' (XLM-R / RoBERTa / BERT): word + absolute position + token-type embeddings, post-LN
      blocks with biases and a GELU MLP. Real token k of a sequence (k = 0, 1, ...) uses position row
      `position_offset + k` (pad_token_id + 1 for XLM-R/RoBERTa, 0 for BERT).
    """
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    norm_eps: float = 1e-5
    activation: str = "gelu"
    pad_token_id: int = 0
    # ModernBERT
    layer_types: tuple[str, ...] = ()
    local_window: int = 128
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # XLM-R / BERT
    max_position_embeddings: int = 514
    type_vocab_size: int = 2
    position_offset: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"EncoderConfig.family={self.family!r}; expected one of {FAMILIES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"EncoderConfig.activation={self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_heads={self.num_heads}")
        if self.family == "modernbert":
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"EncoderConfig.layer_types has {len(self.layer_types)} entries for "
                                 f"num_layers={self.num_layers}")
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ValueError(f"EncoderConfig.layer_types contains {bad}; expected {LAYER_TYPES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: dict | str | os.PathLike, **overrides) -> "EncoderConfig":
        """From an HF config.json (a dict, the file, or its folder); `overrides` replace fields."""
        if not isinstance(config, dict):
            path = pathlib.Path(config)
            path = path / "config.json" if path.is_dir() else path
            config = json.loads(path.read_text())
        model_type = config.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ValueError(f"config model_type={model_type!r} is not an encoder we implement "
                             f"({sorted(_HF_MODEL_TYPES)})")
        family, roberta_positions = _HF_MODEL_TYPES[model_type]
        act_key = "hidden_activation" if family == "modernbert" else "hidden_act"
        act = config.get(act_key, "gelu")
        if act not in _HF_ACTIVATIONS:
            raise ValueError(f"config {act_key}={act!r} is not supported ({sorted(_HF_ACTIVATIONS)})")
        pad = config.get("pad_token_id")
        fields: dict[str, Any] = dict(
            family=family, vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"], activation=_HF_ACTIVATIONS[act],
            pad_token_id=0 if pad is None else pad)
        if family == "modernbert":
            fields.update(_modernbert_fields(config))
        else:
            pos_type = config.get("position_embedding_type", "absolute")
            if pos_type != "absolute":
                raise ValueError(f"config position_embedding_type={pos_type!r}; only 'absolute' is implemented")
            fields.update(norm_eps=config.get("layer_norm_eps", 1e-12),
                          max_position_embeddings=config["max_position_embeddings"],
                          type_vocab_size=config.get("type_vocab_size", 2),
                          position_offset=fields["pad_token_id"] + 1 if roberta_positions else 0)
        fields.update(overrides)
        return cls(**fields)


def _modernbert_fields(config: dict) -> dict:
    """ModernBERT settings from either config generation (hub-era flat keys or transformers-5 dicts)."""
    n = config["num_hidden_layers"]
    if config.get("layer_types"):
        names = {"full_attention": "global", "sliding_attention": "local"}
        unknown = sorted(set(config["layer_types"]) - set(names))
        if unknown:
            raise ValueError(f"config layer_types contains {unknown}; expected {sorted(names)}")
        layer_types = tuple(names[t] for t in config["layer_types"])
    else:
        every = config.get("global_attn_every_n_layers", 3)
        layer_types = tuple("global" if i % every == 0 else "local" for i in range(n))
    rope_params = config.get("rope_parameters") or {}
    for key, params in rope_params.items():
        if (params or {}).get("rope_type", "default") != "default":
            raise ValueError(f"config rope_parameters[{key!r}].rope_type={params['rope_type']!r}; "
                             "only 'default' is implemented")
    global_theta = (rope_params.get("full_attention") or {}).get("rope_theta", config.get("global_rope_theta", 160_000.0))
    local_theta = (rope_params.get("sliding_attention") or {}).get("rope_theta", config.get("local_rope_theta", 10_000.0))
    return dict(layer_types=layer_types, local_window=config.get("local_attention", 128),
                global_rope_theta=float(global_theta),
                local_rope_theta=float(global_theta if local_theta is None else local_theta),
                norm_eps=config.get("norm_eps", 1e-5), norm_bias=config.get("norm_bias", False),
                attention_bias=config.get("attention_bias", False), mlp_bias=config.get("mlp_bias", False))


# ----------------------------------------------------------------------------- building blocks

_INIT = jax.nn.initializers.normal(0.02)


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], names: tuple, dtype, init=_INIT) -> nnx.Param:
    value = init(rngs.params(), shape, dtype) if rngs is not None else init(shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)  # = sharding_names (deprecated alias)


class Dense(nnx.Module):
    """y = x . kernel (+ bias), contracting x's trailing `len(in_shape)` axes; kernel [*in_shape, *out_shape]."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], names: tuple, *, use_bias: bool,
                 cfg: EncoderConfig, rngs: nnx.Rngs):
        self.n_in, self.dtype = len(in_shape), jnp.dtype(cfg.dtype)
        pdtype = jnp.dtype(cfg.param_dtype)
        self.kernel = _param(rngs, (*in_shape, *out_shape), names, pdtype)
        self.bias = _param(None, out_shape, names[self.n_in:], pdtype, jnp.zeros) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=self.n_in)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, statistics in fp32; the bias is optional (ModernBERT has none)."""

    def __init__(self, dim: int, *, eps: float, use_bias: bool, cfg: EncoderConfig):
        pdtype = jnp.dtype(cfg.param_dtype)
        self.eps = eps
        self.scale = _param(None, (dim,), ("norm",), pdtype, jnp.ones)
        self.bias = _param(None, (dim,), ("norm",), pdtype, jnp.zeros) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        y = (h - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Embed(nnx.Module):
    """A lookup table [num, dim]."""

    def __init__(self, num: int, dim: int, names: tuple, *, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.embedding = _param(rngs, (num, dim), names, jnp.dtype(cfg.param_dtype))
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        # mode="fill": an out-of-range id yields NaN rows (visible) instead of a silently clipped lookup.
        return jnp.take(self.embedding[...], ids, axis=0, mode="fill").astype(self.dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with one fused QKV projection (kernel [D, 3, H, hd]: q, k, v slots)."""

    def __init__(self, cfg: EncoderConfig, *, use_bias: bool, rngs: nnx.Rngs):
        d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.qkv = Dense((d,), (3, h, hd), ("embed", None, "q_heads", "head_dim"), use_bias=use_bias, cfg=cfg, rngs=rngs)
        self.out = Dense((h, hd), (d,), ("q_heads", "head_dim", "embed"), use_bias=use_bias, cfg=cfg, rngs=rngs)
        self.scale = hd ** -0.5

    def __call__(self, x: jax.Array, visible: jax.Array, positions: jax.Array | None = None,
                 inv_freq=None) -> jax.Array:
        qkv = self.qkv(x)                                   # [B, T, 3, H, hd]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if inv_freq is not None:
            q, k = rope.apply_rope(q, positions, inv_freq), rope.apply_rope(k, positions, inv_freq)
        return self.out(attention_lib.attention(q, k, v, visible, scale=self.scale))


class GeGLU(nnx.Module):
    """ModernBERT MLP: Wi -> (u, g) halves (kernel [D, 2, F]); out = Wo(act(u) * g)."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.wi = Dense((d,), (2, f), ("embed", None, "mlp"), use_bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)
        self.wo = Dense((f,), (d,), ("mlp", "embed"), use_bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        ug = self.wi(x)
        return self.wo(self.act(ug[..., 0, :]) * ug[..., 1, :])


class GeluMLP(nnx.Module):
    """BERT MLP: Wo(act(Wi x + bi)) + bo."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.wi = Dense((d,), (f,), ("embed", "mlp"), use_bias=True, cfg=cfg, rngs=rngs)
        self.wo = Dense((f,), (d,), ("mlp", "embed"), use_bias=True, cfg=cfg, rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi(x)))


class ModernBertLayer(nnx.Module):
    """Pre-LN block: h += attn(attn_norm(h)); h += mlp(mlp_norm(h)). Layer 0 has no attn_norm."""

    def __init__(self, cfg: EncoderConfig, layer_id: int, rngs: nnx.Rngs):
        norm = dict(eps=cfg.norm_eps, use_bias=cfg.norm_bias, cfg=cfg)
        self.is_local = cfg.layer_types[layer_id] == "local"
        self.attn_norm = LayerNorm(cfg.hidden_size, **norm) if layer_id > 0 else None
        self.attn = SelfAttention(cfg, use_bias=cfg.attention_bias, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.hidden_size, **norm)
        self.mlp = GeGLU(cfg, rngs)

    def __call__(self, h, visible, positions, inv_freq):
        x = h if self.attn_norm is None else self.attn_norm(h)
        h = h + self.attn(x, visible, positions, inv_freq)
        return h + self.mlp(self.mlp_norm(h))


class BertLayer(nnx.Module):
    """Post-LN block: h = attn_norm(h + attn(h)); h = mlp_norm(h + mlp(h))."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        norm = dict(eps=cfg.norm_eps, use_bias=True, cfg=cfg)
        self.attn = SelfAttention(cfg, use_bias=True, rngs=rngs)
        self.attn_norm = LayerNorm(cfg.hidden_size, **norm)
        self.mlp = GeluMLP(cfg, rngs)
        self.mlp_norm = LayerNorm(cfg.hidden_size, **norm)

    def __call__(self, h, visible):
        h = self.attn_norm(h + self.attn(h, visible))
        return self.mlp_norm(h + self.mlp(h))


# ----------------------------------------------------------------------------- the encoder

def segment_layout(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """From a [B, T] segment mask: `same` bool [B, T, T] (query and key in one non-pad sequence) and
    each token's index within its own sequence [B, T] (cumsum(mask) - 1 for a plain 0/1 mask)."""
    seg = mask.astype(jnp.int32)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    t = seg.shape[1]
    earlier = jnp.arange(t)[None, :] < jnp.arange(t)[:, None]          # key j before query i
    index = jnp.sum(same & earlier[None], axis=-1, dtype=jnp.int32)
    return same, index


class Encoder(nnx.Module):
    """A bidirectional encoder; `__call__` returns HF's `last_hidden_state` [B, T, D] in cfg.dtype."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.embed = Embed(cfg.vocab_size, d, ("vocab", "embed"), cfg=cfg, rngs=rngs)
        if cfg.family == "modernbert":
            self.embed_norm = LayerNorm(d, eps=cfg.norm_eps, use_bias=cfg.norm_bias, cfg=cfg)
            self.layers = nnx.List([ModernBertLayer(cfg, i, rngs) for i in range(cfg.num_layers)])
            self.final_norm = LayerNorm(d, eps=cfg.norm_eps, use_bias=cfg.norm_bias, cfg=cfg)
        else:
            self.position_embed = Embed(cfg.max_position_embeddings, d, (None, "embed"), cfg=cfg, rngs=rngs)
            self.token_type_embed = Embed(cfg.type_vocab_size, d, (None, "embed"), cfg=cfg, rngs=rngs)
            self.embed_norm = LayerNorm(d, eps=cfg.norm_eps, use_bias=True, cfg=cfg)
            self.layers = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.num_layers)])

    def __call__(self, tokens: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        """tokens int [B, T]; mask int [B, T] (0 = padding, k > 0 = sequence k of the row; see module doc);
        token_type_ids int [B, T] (XLM-R/BERT only; default 0)."""
        cfg = self.cfg
        same, index = segment_layout(mask)
        if cfg.family == "modernbert":
            if token_type_ids is not None:
                raise ValueError("ModernBERT has no token type embeddings; pass token_type_ids=None")
            near = jnp.abs(jnp.arange(tokens.shape[1])[:, None] - jnp.arange(tokens.shape[1])[None, :])
            local = same & (near <= cfg.local_window // 2)[None]
            inv = {"global": rope.inverse_frequencies(cfg.head_dim, cfg.global_rope_theta),
                   "local": rope.inverse_frequencies(cfg.head_dim, cfg.local_rope_theta)}
            h = self.embed_norm(self.embed(tokens))
            for layer in self.layers:
                kind = "local" if layer.is_local else "global"
                h = layer(h, local if layer.is_local else same, index, inv[kind])
            return self.final_norm(h)
        if tokens.shape[1] + cfg.position_offset > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the {cfg.max_position_embeddings} "
                             f"position embeddings (offset {cfg.position_offset})")
        # RoBERTa numbering: real tokens from position_offset, padding at padding_idx (= offset - 1).
        positions = jnp.where(mask > 0, index + cfg.position_offset, max(cfg.position_offset - 1, 0))
        types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
        h = self.embed(tokens) + self.position_embed(positions) + self.token_type_embed(types)
        h = self.embed_norm(h)
        for layer in self.layers:
            h = layer(h, same)
        return h


# ----------------------------------------------------------------------------- pooling and text helpers

def masked_mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """LRPO's pooling: sum_t m_t h_t / max(sum_t m_t, 1e-9) over non-pad tokens; fp32 [B, D]."""
    m = (mask > 0).astype(jnp.float32)
    total = jnp.einsum("bt,btd->bd", m, hidden.astype(jnp.float32))
    return total / jnp.maximum(m.sum(-1, keepdims=True), 1e-9)


def segment_mean_pool(hidden: jax.Array, mask: jax.Array, num_segments: int) -> jax.Array:
    """Mean over each packed sequence k = 1..num_segments of each row; fp32 [B, num_segments, D]."""
    onehot = (mask[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None]).astype(jnp.float32)
    total = jnp.einsum("bst,btd->bsd", onehot, hidden.astype(jnp.float32))
    return total / jnp.maximum(onehot.sum(-1)[..., None], 1e-9)


def cls_pool(hidden: jax.Array) -> jax.Array:
    """The first token's hidden state (CLS / <s>); fp32 [B, D]."""
    return hidden[:, 0].astype(jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||_2, eps) along the last axis (torch.nn.functional.normalize)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


def sentence_embeddings(encoder: Encoder, tokens: jax.Array, mask: jax.Array, *, pooling: str = "mean",
                        segments: int | None = None, micro_batch: int | None = None) -> jax.Array:
    """L2-normalised sentence vectors (fp32): [B, D], or [B, segments, D] for packed rows (mean pooling only).

    pooling: 'mean' (LRPO, e5) or 'cls'. micro_batch: run the rows as B // micro_batch chunks one after
    another (lax.map). On CPU a chunk's activations then stay in cache instead of streaming through DRAM
    for every elementwise pass: ~1.3x faster at 64 x 128 tokens with chunks of 4 (bench/encoder.py).
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling={pooling!r}; expected 'mean' or 'cls'")
    if segments is not None and pooling != "mean":
        raise ValueError("packed rows (segments=...) support pooling='mean' only")

    def embed(t, m):
        hidden = encoder(t, m)
        if segments is not None:
            return l2_normalize(segment_mean_pool(hidden, m, segments))
        return l2_normalize(masked_mean_pool(hidden, m) if pooling == "mean" else cls_pool(hidden))

    b, t = tokens.shape
    if micro_batch is None or micro_batch >= b:
        return embed(tokens, mask)
    if b % micro_batch:
        raise ValueError(f"batch of {b} rows is not a multiple of micro_batch={micro_batch}")
    chunks = (tokens.reshape(b // micro_batch, micro_batch, t), mask.reshape(b // micro_batch, micro_batch, t))
    out = jax.lax.map(lambda c: embed(*c), chunks)
    return out.reshape(b, *out.shape[2:])


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, *, length: int | None = None,
              multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists to `length` (default: the longest, rounded up to `multiple`).
    Returns int32 tokens [N, L] and mask [N, L] (1 = real token)."""
    longest = max((len(s) for s in seqs), default=0)
    length = length if length is not None else -(-max(longest, 1) // multiple) * multiple
    if longest > length:
        i = next(i for i, s in enumerate(seqs) if len(s) > length)
        raise ValueError(f"sequence {i} has {len(seqs[i])} tokens; length is {length}")
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], mask[i, :len(s)] = s, 1
    return tokens, mask


def length_batches(lengths: Sequence[int], *, multiple: int = 32,
                   batch_tokens: int = 512) -> list[tuple[np.ndarray, int, int]]:
    """Plans fixed-shape batches for sequences of varied length: sorted by length, each batch padded to
    a multiple of `multiple` tokens (its longest member) with `max(1, batch_tokens // length)` rows.
    Returns (indices, rows, length) per batch. Shapes come from a small fixed set (one per padded
    length), so few programs compile, and attention costs each sequence only its own bucket length.
    """
    def rows_for(n: int) -> int:
        return max(1, batch_tokens // (-(-max(n, 1) // multiple) * multiple))

    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, i = [], 0
    while i < len(order):
        size = rows_for(lengths[order[i]])
        while size > 1 and rows_for(lengths[order[min(i + size, len(order)) - 1]]) < size:
            size = rows_for(lengths[order[min(i + size, len(order)) - 1]])
        idx = order[i:i + size]
        longest = lengths[idx[-1]]
        batches.append((idx, rows_for(longest), -(-max(longest, 1) // multiple) * multiple))
        i += size
    return batches


def pack_batch(seqs: Sequence[Sequence[int]], row_len: int, pad_id: int, *, max_segments: int,
               num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packs token lists into rows of `row_len` tokens (first-fit, longest first) so little compute is
    spent on padding, at most `max_segments` sequences per row (the `segments` given to
    `sentence_embeddings`). Returns int32 tokens [R, row_len], mask [R, row_len] (k = k-th sequence of
    the row, 0 = padding) and place [N, 2]: (row, k - 1) of each input. `num_rows` pads R to a fixed
    count (fixed shapes, no recompiles); it is an error if the sequences do not fit."""
    too_long = [i for i, s in enumerate(seqs) if len(s) > row_len]
    if too_long:
        raise ValueError(f"sequences {too_long[:5]} are longer than row_len={row_len}")
    free: list[int] = []                       # tokens left in each row
    counts: list[int] = []                     # sequences in each row
    place = np.zeros((len(seqs), 2), np.int32)
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        row = next((r for r, f in enumerate(free) if f >= len(seqs[i]) and counts[r] < max_segments), None)
        if row is None:
            row = len(free)
            free.append(row_len)
            counts.append(0)
        place[i] = row, counts[row]
        free[row] -= len(seqs[i])
        counts[row] += 1
    rows = len(free) if num_rows is None else num_rows
    if rows < len(free):
        raise ValueError(f"{len(seqs)} sequences need {len(free)} rows of {row_len} tokens; num_rows={num_rows}")
    tokens = np.full((rows, row_len), pad_id, np.int32)
    mask = np.zeros((rows, row_len), np.int32)
    fill = [0] * rows
    for i in np.lexsort((place[:, 1], place[:, 0])):   # each row in segment order
        (row, k), n = place[i], len(seqs[i])
        tokens[row, fill[row]:fill[row] + n] = seqs[i]
        mask[row, fill[row]:fill[row] + n] = k + 1
        fill[row] += n
    return tokens, mask, place


def e5_inputs(texts: Sequence[str], kind: str = "passage") -> list[str]:
    """Prefixes texts as multilingual-e5 expects ('query: ' for search queries, 'passage: ' otherwise)."""
    if kind not in E5_PREFIXES:
        raise ValueError(f"e5 kind={kind!r}; expected one of {sorted(E5_PREFIXES)}")
    return [E5_PREFIXES[kind] + t for t in texts]
