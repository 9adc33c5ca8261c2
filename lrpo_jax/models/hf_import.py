"""Decoder weights from and to local Hugging Face folders (config.json + safetensors).

One table per family maps HF tensor names to our parameter paths with a layout transform
(Tunix-loader style). Errors name the tensor: missing, unexpected and mis-shaped tensors are all
reported at once. Export writes a folder that `transformers.AutoModelForCausalLM` loads, so a
trained policy can be evaluated with HF or served with vLLM.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax.models.decoder import Decoder, DecoderConfig


class WeightImportError(ValueError):
    """Checkpoint tensors that do not fit the model; the message lists every problem."""


# ------------------------------------------------------------------------------------------------
# Safetensors I/O (single file or sharded index).
# ------------------------------------------------------------------------------------------------
def safetensors_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    folder = pathlib.Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model.safetensors (or sharded index) in {folder}")
    return files


def iter_tensors(folder: str | os.PathLike):
    """Yields (name, numpy array) one tensor at a time, in the file's dtype (bf16 as ml_dtypes.bfloat16;
    widened to float32 where the installed safetensors cannot read bf16 into numpy)."""
    from safetensors import safe_open
    for path in safetensors_files(folder):
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                try:
                    yield name, f.get_tensor(name)
                except TypeError:  # numpy has no bfloat16: go through torch-free ml_dtypes
                    with safe_open(path, framework="flax") as g:
                        yield name, np.asarray(g.get_tensor(name), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Name tables. A rule: (HF regex, our path template, to_ours(x, cfg), to_hf(x, cfg)).
# ------------------------------------------------------------------------------------------------
def _same(x, cfg):
    return x


def _t(x, cfg):
    return x.T


def _heads_in(n_heads: Callable[[DecoderConfig], int]):
    """HF [H*hd, D] (torch Linear weight) -> ours [D, H, hd]."""
    return (lambda x, c: x.T.reshape(c.hidden_size, n_heads(c), c.head_dim),
            lambda x, c: x.reshape(c.hidden_size, -1).T)


def _bias_in(n_heads):
    return (lambda x, c: x.reshape(n_heads(c), c.head_dim), lambda x, c: x.reshape(-1))


_Q, _KV = (lambda c: c.num_heads), (lambda c: c.num_kv_heads)
_O = (lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
      lambda x, c: x.reshape(-1, c.hidden_size).T)
_L = r"model\.layers\.(\d+)\."

_COMMON = [
    (r"model\.embed_tokens\.weight", "embed", _same, _same),
    (r"model\.norm\.weight", "final_norm/scale", _same, _same),
    (r"lm_head\.weight", "lm_head", _t, _t),
    (_L + r"self_attn\.q_proj\.weight", "layers/{0}/attn/q", *_heads_in(_Q)),
    (_L + r"self_attn\.k_proj\.weight", "layers/{0}/attn/k", *_heads_in(_KV)),
    (_L + r"self_attn\.v_proj\.weight", "layers/{0}/attn/v", *_heads_in(_KV)),
    (_L + r"self_attn\.o_proj\.weight", "layers/{0}/attn/o", *_O),
    (_L + r"self_attn\.q_proj\.bias", "layers/{0}/attn/q_bias", *_bias_in(_Q)),
    (_L + r"self_attn\.k_proj\.bias", "layers/{0}/attn/k_bias", *_bias_in(_KV)),
    (_L + r"self_attn\.v_proj\.bias", "layers/{0}/attn/v_bias", *_bias_in(_KV)),
    (_L + r"mlp\.gate_proj\.weight", "layers/{0}/mlp/gate", _t, _t),
    (_L + r"mlp\.up_proj\.weight", "layers/{0}/mlp/up", _t, _t),
    (_L + r"mlp\.down_proj\.weight", "layers/{0}/mlp/down", _t, _t),
    (_L + r"input_layernorm\.weight", "layers/{0}/attn_norm/scale", _same, _same),
]
RULES = {
    "qwen2": _COMMON + [(_L + r"post_attention_layernorm\.weight", "layers/{0}/mlp_norm/scale", _same, _same)],
    "llama": _COMMON + [(_L + r"post_attention_layernorm\.weight", "layers/{0}/mlp_norm/scale", _same, _same)],
    "gemma3": _COMMON + [
        (_L + r"post_attention_layernorm\.weight", "layers/{0}/attn_post_norm/scale", _same, _same),
        (_L + r"pre_feedforward_layernorm\.weight", "layers/{0}/mlp_norm/scale", _same, _same),
        (_L + r"post_feedforward_layernorm\.weight", "layers/{0}/mlp_post_norm/scale", _same, _same),
        (_L + r"self_attn\.q_norm\.weight", "layers/{0}/attn/q_norm/scale", _same, _same),
        (_L + r"self_attn\.k_norm\.weight", "layers/{0}/attn/k_norm/scale", _same, _same),
    ],
}
# Tensors some checkpoints carry that the text decoder does not use.
# Multimodal Gemma 3 keeps its vision parts at the top level (older transformers) or under `model.` (>= 4.52).
_IGNORED = (r"model\.rotary_emb\..*", r".*\.rotary_emb\.inv_freq", r"(model\.)?vision_tower\..*",
            r"(model\.)?multi_modal_projector\..*")
# Multimodal Gemma 3 checkpoints nest the text model under these prefixes.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))


def _canonical(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _path_str(path) -> str:
    return "/".join(str(p) for p in path)


def abstract_decoder(cfg: DecoderConfig):
    """(graphdef, abstract state) without allocating weights."""
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def load_decoder(folder: str | os.PathLike, **overrides) -> tuple[DecoderConfig, nnx.State]:
    """Reads config.json + safetensors from `folder` into (config, params state) on the host device."""
    folder = pathlib.Path(folder)
    cfg = DecoderConfig.from_hf(folder, **overrides)
    _, abstract = abstract_decoder(cfg)
    wanted = {_path_str(p): v for p, v in nnx.to_flat_state(abstract)}
    rules = [(re.compile(rx + r"$"), tmpl, f) for rx, tmpl, f, _ in RULES[cfg.family]]
    got: dict[str, np.ndarray] = {}
    unexpected, misshaped = [], []
    for raw_name, array in iter_tensors(folder):
        name = _canonical(raw_name)
        if any(re.fullmatch(rx, name) for rx in _IGNORED):
            continue
        for rx, tmpl, to_ours in rules:
            m = rx.match(name)
            if m:
                path = tmpl.format(*m.groups())
                if path not in wanted:
                    if path == "lm_head" and cfg.tie_embeddings:
                        break  # some tied checkpoints store a copy; ours ties by construction
                    unexpected.append(f"{raw_name} (-> {path}, not in this {cfg.family} config)")
                    break
                want = tuple(wanted[path].shape)
                try:
                    value = to_ours(array, cfg)
                except ValueError:  # a reshape that cannot work: report the raw shape
                    value = array
                if tuple(value.shape) != want:
                    misshaped.append(f"{raw_name}: shape {tuple(array.shape)} -> {tuple(value.shape)}, "
                                     f"expected {want} for {path}")
                else:
                    got[path] = value.astype(jnp.dtype(cfg.param_dtype))
                break
        else:
            unexpected.append(raw_name)
    missing = sorted(set(wanted) - set(got))
    if missing or unexpected or misshaped:
        parts = [f"{folder}: checkpoint does not match the {cfg.family} decoder config"]
        parts += [f"  missing: {m}" for m in missing]
        parts += [f"  unexpected: {u}" for u in unexpected]
        parts += [f"  mis-shaped: {s}" for s in misshaped]
        raise WeightImportError("\n".join(parts))
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        flat.append((path, var.replace(jnp.asarray(got[_path_str(path)]))))
    return cfg, nnx.from_flat_state(flat)


def hf_config_dict(cfg: DecoderConfig, dtype: str | None = None) -> dict:
    """An HF config.json for `cfg`: transformers 5's `rope_parameters`, plus the older `rope_theta` /
    `rope_scaling` / `rope_local_base_freq` keys that transformers 4 loaders (and vLLM on them) read."""
    default_ctx = {"qwen2": 32768, "llama": 131072, "gemma3": 32768}[cfg.family]
    base = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id,
                eos_token_id=list(cfg.eos_token_ids) if len(cfg.eos_token_ids) != 1 else cfg.eos_token_ids[0],
                pad_token_id=cfg.pad_token_id, torch_dtype=dtype or cfg.param_dtype,
                max_position_embeddings=cfg.max_position_embeddings or default_ctx,
                rope_theta=cfg.rope_theta, rope_scaling=dict(cfg.rope_scaling) if cfg.rope_scaling else None)
    global_rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **dict(cfg.rope_scaling or ())}
    if cfg.family == "qwen2":
        return {**base, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "rope_parameters": global_rope,
                "use_sliding_window": False, "hidden_act": "silu"}
    if cfg.family == "llama":
        return {**base, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_parameters": global_rope,
                "attention_bias": cfg.qkv_bias, "mlp_bias": False, "hidden_act": "silu"}
    return {**base, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
            "rope_local_base_freq": cfg.local_rope_theta,
            "rope_parameters": {"full_attention": global_rope,
                                "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta}},
            "sliding_window": cfg.sliding_window, "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
            "layer_types": ["sliding_attention" if t == "local" else "full_attention" for t in cfg.layer_types],
            "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None, "attn_logit_softcapping": None}


def save_decoder(folder: str | os.PathLike, cfg: DecoderConfig, params: nnx.State, dtype: str | None = None) -> pathlib.Path:
    """Writes `params` as an HF folder (config.json + model.safetensors) transformers can load."""
    from safetensors.numpy import save_file
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {_path_str(p): np.asarray(jax.device_get(v[...])) for p, v in nnx.to_flat_state(params)}
    out = {}
    for rx, tmpl, _, to_hf in RULES[cfg.family]:
        groups = re.findall(r"\{(\d+)\}", tmpl)
        layer_ids = range(cfg.num_layers) if groups else [None]
        for i in layer_ids:
            path = tmpl.format(i) if i is not None else tmpl
            if path in flat:
                name = rx.replace(r"(\d+)", str(i)).replace("\\.", ".") if i is not None else rx.replace("\\.", ".")
                value = to_hf(flat.pop(path), cfg)
                out[name] = np.ascontiguousarray(value.astype(np.dtype(dtype or cfg.param_dtype)))
    if flat:
        raise WeightImportError(f"no HF name for parameters: {sorted(flat)}")
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2))
    return folder
