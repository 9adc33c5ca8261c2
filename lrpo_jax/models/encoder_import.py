"""HF encoder checkpoints (config.json + safetensors) -> `Encoder` parameter state.

One rule table per family maps an HF tensor name (a regex, model prefix such as 'model.' or
'roberta.' stripped) to our parameter path and a transform:
  COPY    reshape to the parameter's shape (embeddings, norms, biases; a fused bias [3D] -> [3, H, hd]);
  LINEAR  torch Linear weight [out, in] -> transpose -> reshape to our kernel [*in, *out]
          (Wqkv [3D, D] -> [D, 3, H, hd]: HF's [q | k | v] columns with heads contiguous; GeGLU Wi
          [2F, D] -> [D, 2, F]: first half = activated input, second = gate; Wo [D, D] -> [H, hd, D]).
A rule may fill one slot of a fused axis (XLM-R's separate query/key/value -> qkv[:, 0|1|2]).
Tensors that are known heads we do not model (MLM head, pooler) are skipped; anything else unknown,
missing, or mis-shaped raises `EncoderImportError` naming the tensor.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax.models.encoder import Encoder, EncoderConfig

COPY, LINEAR = "copy", "linear"


class EncoderImportError(ValueError):
    """A checkpoint does not fit the encoder config (the message names the tensor or parameter)."""


_MODERNBERT_RULES = (
    (r"embeddings\.tok_embeddings\.weight", "embed.embedding", COPY, None),
    (r"embeddings\.norm\.weight", "embed_norm.scale", COPY, None),
    (r"embeddings\.norm\.bias", "embed_norm.bias", COPY, None),
    (r"layers\.(\d+)\.attn_norm\.weight", "layers.{0}.attn_norm.scale", COPY, None),
    (r"layers\.(\d+)\.attn_norm\.bias", "layers.{0}.attn_norm.bias", COPY, None),
    (r"layers\.(\d+)\.attn\.Wqkv\.weight", "layers.{0}.attn.qkv.kernel", LINEAR, None),
    (r"layers\.(\d+)\.attn\.Wqkv\.bias", "layers.{0}.attn.qkv.bias", COPY, None),
    (r"layers\.(\d+)\.attn\.Wo\.weight", "layers.{0}.attn.out.kernel", LINEAR, None),
    (r"layers\.(\d+)\.attn\.Wo\.bias", "layers.{0}.attn.out.bias", COPY, None),
    (r"layers\.(\d+)\.mlp_norm\.weight", "layers.{0}.mlp_norm.scale", COPY, None),
    (r"layers\.(\d+)\.mlp_norm\.bias", "layers.{0}.mlp_norm.bias", COPY, None),
    (r"layers\.(\d+)\.mlp\.Wi\.weight", "layers.{0}.mlp.wi.kernel", LINEAR, None),
    (r"layers\.(\d+)\.mlp\.Wi\.bias", "layers.{0}.mlp.wi.bias", COPY, None),
    (r"layers\.(\d+)\.mlp\.Wo\.weight", "layers.{0}.mlp.wo.kernel", LINEAR, None),
    (r"layers\.(\d+)\.mlp\.Wo\.bias", "layers.{0}.mlp.wo.bias", COPY, None),
    (r"final_norm\.weight", "final_norm.scale", COPY, None),
    (r"final_norm\.bias", "final_norm.bias", COPY, None),
)
_MODERNBERT_SKIPPED = (r"head\..*", r"decoder\..*", r"classifier\..*")

_L = r"encoder\.layer\.(\d+)\."
_XLMR_RULES = (
    (r"embeddings\.word_embeddings\.weight", "embed.embedding", COPY, None),
    (r"embeddings\.position_embeddings\.weight", "position_embed.embedding", COPY, None),
    (r"embeddings\.token_type_embeddings\.weight", "token_type_embed.embedding", COPY, None),
    (r"embeddings\.LayerNorm\.(?:weight|gamma)", "embed_norm.scale", COPY, None),
    (r"embeddings\.LayerNorm\.(?:bias|beta)", "embed_norm.bias", COPY, None),
    (_L + r"attention\.self\.query\.weight", "layers.{0}.attn.qkv.kernel", LINEAR, 0),
    (_L + r"attention\.self\.key\.weight", "layers.{0}.attn.qkv.kernel", LINEAR, 1),
    (_L + r"attention\.self\.value\.weight", "layers.{0}.attn.qkv.kernel", LINEAR, 2),
    (_L + r"attention\.self\.query\.bias", "layers.{0}.attn.qkv.bias", COPY, 0),
    (_L + r"attention\.self\.key\.bias", "layers.{0}.attn.qkv.bias", COPY, 1),
    (_L + r"attention\.self\.value\.bias", "layers.{0}.attn.qkv.bias", COPY, 2),
    (_L + r"attention\.output\.dense\.weight", "layers.{0}.attn.out.kernel", LINEAR, None),
    (_L + r"attention\.output\.dense\.bias", "layers.{0}.attn.out.bias", COPY, None),
    (_L + r"attention\.output\.LayerNorm\.(?:weight|gamma)", "layers.{0}.attn_norm.scale", COPY, None),
    (_L + r"attention\.output\.LayerNorm\.(?:bias|beta)", "layers.{0}.attn_norm.bias", COPY, None),
    (_L + r"intermediate\.dense\.weight", "layers.{0}.mlp.wi.kernel", LINEAR, None),
    (_L + r"intermediate\.dense\.bias", "layers.{0}.mlp.wi.bias", COPY, None),
    (_L + r"output\.dense\.weight", "layers.{0}.mlp.wo.kernel", LINEAR, None),
    (_L + r"output\.dense\.bias", "layers.{0}.mlp.wo.bias", COPY, None),
    (_L + r"output\.LayerNorm\.(?:weight|gamma)", "layers.{0}.mlp_norm.scale", COPY, None),
    (_L + r"output\.LayerNorm\.(?:bias|beta)", "layers.{0}.mlp_norm.bias", COPY, None),
)
_XLMR_SKIPPED = (r"pooler\..*", r"lm_head\..*", r"cls\..*", r"embeddings\.position_ids")

RULES = {"modernbert": _MODERNBERT_RULES, "xlmr": _XLMR_RULES}
SKIPPED = {"modernbert": _MODERNBERT_SKIPPED, "xlmr": _XLMR_SKIPPED}
PREFIXES = {"modernbert": ("model.",), "xlmr": ("roberta.", "bert.", "model.")}
_FUSED_SLOTS = 3  # q, k, v


def read_safetensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF folder (model.safetensors or a sharded model.safetensors.index.json), fp32 numpy."""
    from safetensors import safe_open
    folder = pathlib.Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for name in files:
        # framework="flax" reads bf16/fp16 too (numpy has no bfloat16); upcast once here.
        with safe_open(str(folder / name), framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key).astype(jnp.float32))
    return tensors


def _strip_prefix(name: str, family: str) -> str:
    for prefix in PREFIXES[family]:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def state_from_hf(cfg: EncoderConfig, tensors: Mapping[str, np.ndarray]) -> nnx.State:
    """Maps HF tensors (by name) onto the parameter state of `Encoder(cfg)`, cast to cfg.param_dtype."""
    _, state = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
    shapes = {".".join(map(str, path)): var.get_value().shape for path, var in nnx.to_flat_state(state)}
    values: dict[str, np.ndarray] = {}
    slots_filled: dict[str, set] = {}
    rules = [(re.compile(p), target, kind, slot) for p, target, kind, slot in RULES[cfg.family]]
    skipped = [re.compile(p) for p in SKIPPED[cfg.family]]
    for name, tensor in tensors.items():
        key = _strip_prefix(name, cfg.family)
        match = next(((m, target, kind, slot) for rx, target, kind, slot in rules
                      if (m := rx.fullmatch(key))), None)
        if match is None:
            if any(rx.fullmatch(key) for rx in skipped):
                continue
            raise EncoderImportError(f"unexpected tensor {name!r} for a {cfg.family} encoder")
        m, target, kind, slot = match
        path = target.format(*m.groups())
        if path not in shapes:
            raise EncoderImportError(f"tensor {name!r} maps to parameter {path!r}, which this config "
                                     f"({cfg.num_layers} layers, norm_bias={cfg.norm_bias}) does not have")
        shape = shapes[path]
        if slot is None:
            part = shape
        else:  # one q/k/v slice of the fused axis: axis 1 of a kernel [D, 3, H, hd], axis 0 of a bias
            part = shape[:1] + shape[2:] if kind == LINEAR else shape[1:]
        value = np.asarray(tensor, np.float32)
        value = value.T if kind == LINEAR else value
        if value.size != int(np.prod(part)):
            raise EncoderImportError(f"tensor {name!r} has shape {tuple(tensor.shape)}; parameter {path!r}"
                                     f"{'' if slot is None else f' slot {slot}'} needs {part}")
        value = value.reshape(part)
        if slot is None:
            if path in values:
                raise EncoderImportError(f"tensor {name!r} fills parameter {path!r} a second time")
            values[path] = value
            continue
        filled = slots_filled.setdefault(path, set())
        if slot in filled:
            raise EncoderImportError(f"tensor {name!r} fills slot {slot} of parameter {path!r} a second time")
        filled.add(slot)
        fused = values.setdefault(path, np.zeros(shape, np.float32))
        if kind == LINEAR:
            fused[:, slot] = value
        else:
            fused[slot] = value
    missing = sorted(set(shapes) - set(values))
    partial = sorted(p for p, s in slots_filled.items() if len(s) != _FUSED_SLOTS)
    if missing or partial:
        raise EncoderImportError(f"checkpoint lacks parameters {missing}" +
                                 (f" and some q/k/v slots of {partial}" if partial else ""))
    dtype = jnp.dtype(cfg.param_dtype)
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = pure
        for part in parents:
            node = node[int(part) if part.isdigit() else part]
        node[leaf] = jnp.asarray(value, dtype)
    nnx.replace_by_pure_dict(state, pure)
    return state


def load_encoder(folder: str | os.PathLike, **overrides) -> tuple[EncoderConfig, nnx.State]:
    """(EncoderConfig, parameter state) from a local HF folder; `overrides` replace config fields."""
    cfg = EncoderConfig.from_hf(folder, **overrides)
    return cfg, state_from_hf(cfg, read_safetensors(folder))
