"""GGUF (llama.cpp) checkpoints -> ordinary Hugging Face folders, with numpy only (no torch).

Weights are dequantised with the `gguf` package and renamed/relaid out to HF conventions, undoing
the two changes llama.cpp's converter makes: Llama-family Q/K rows are permuted for its rotary
layout, and Gemma's (1 + w) norm weights are stored as 1 + w. The result is checked tensor by
tensor against transformers' own GGUF loader in tests/test_shipped.py.
"""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np

# GGUF tensor name -> HF name, per block suffix.
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# ffn_norm is the pre-MLP norm: Llama calls it post_attention_layernorm, Gemma pre_feedforward_layernorm.
_FFN_NORM = {"llama": "post_attention_layernorm", "gemma3": "pre_feedforward_layernorm"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFConversionError(ValueError):
    pass


def read_metadata(reader) -> dict:
    """Scalar/string metadata of a GGUFReader (token arrays are skipped: the tokenizer reads them)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # pragma: no cover - exotic field types we never need
            continue
    return out


def hf_config(meta: dict) -> dict:
    """An HF config.json dict for a gemma3 or llama GGUF."""
    arch = meta["general.architecture"]
    get = lambda k, d=None: meta.get(f"{arch}.{k}", d)  # noqa: E731
    heads = int(get("attention.head_count"))
    common = dict(
        vocab_size=int(get("vocab_size", 0)) or None, hidden_size=int(get("embedding_length")),
        intermediate_size=int(get("feed_forward_length")), num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads, num_key_value_heads=int(get("attention.head_count_kv", heads)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(get("context_length")),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"), torch_dtype="float32",
    )
    # RoPE scaling of the (global) layers: llama.cpp writes {arch}.rope.scaling.type / .factor (linear
    # for gemma-3-4b and up); other types it writes are not converted.
    kind = str(get("rope.scaling.type", "none"))
    if kind not in ("none", "linear"):
        raise GGUFConversionError(f"{arch}.rope.scaling.type={kind!r} is not converted (only linear or none)")
    scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))} if kind == "linear" else \
        {"rope_type": "default"}
    if arch == "gemma3":
        head_dim = int(get("attention.key_length"))
        n = common["num_hidden_layers"]
        # Not stored in the GGUF: Gemma 3's fixed 5:1 local/global pattern, local rope theta 10k, and
        # query_pre_attn_scalar: head_dim, except 27B's hidden / heads (its 62 layers identify it).
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        scalar = common["hidden_size"] // heads if n == 62 else head_dim
        return {**common, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "head_dim": head_dim,
                "rope_parameters": {"full_attention": {**scaling, "rope_theta": float(get("rope.freq_base"))},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                "sliding_window": int(get("attention.sliding_window")), "layer_types": layer_types,
                "query_pre_attn_scalar": scalar, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                "final_logit_softcapping": None, "attn_logit_softcapping": None}
    if arch == "llama":
        return {**common, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "head_dim": common["hidden_size"] // heads, "hidden_act": "silu", "attention_bias": False,
                "mlp_bias": False,
                "rope_parameters": {**scaling, "rope_theta": float(get("rope.freq_base", 10000.0))}}
    raise GGUFConversionError(f"unsupported GGUF architecture {arch!r} (supported: gemma3, llama)")


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation (interleaved -> rotate-half pairs) on [out, in]."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(reader, config: dict) -> dict[str, np.ndarray]:
    """Dequantised float32 tensors under HF names."""
    from gguf.quants import dequantize
    arch = "gemma3" if config["model_type"] == "gemma3_text" else "llama"
    out = {}
    for t in reader.tensors:
        part = None
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", t.name)
        if m:
            layer, part, kind = m.groups()
            base = _FFN_NORM[arch] if part == "ffn_norm" else _BLOCK.get(part)
            name = f"model.layers.{layer}.{base}.{kind}" if base else None
        else:
            top = re.fullmatch(r"(\w+)\.(weight|bias)", t.name)
            name = f"{_TOP[top.group(1)]}.{top.group(2)}" if top and top.group(1) in _TOP else None
        if name is None:
            raise GGUFConversionError(f"GGUF tensor {t.name!r} has no HF name for architecture {arch}")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # ggml dims are fastest-first
        if arch == "llama" and part in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if part == "attn_q" else config["num_key_value_heads"]
            w = _unpermute_rotary(w, heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w) as the multiplier
        out[name] = np.ascontiguousarray(w)
    if config.get("vocab_size") in (None, 0):
        config["vocab_size"] = int(out["model.embed_tokens.weight"].shape[0])
    if "lm_head.weight" in out:
        config["tie_word_embeddings"] = False
    elif arch == "llama":
        config["tie_word_embeddings"] = True
    return out


def convert(gguf_path: str | pathlib.Path, out_dir: str | pathlib.Path, *, tokenizer: bool = True) -> pathlib.Path:
    """Writes config.json, model.safetensors (fp32), generation_config.json and tokenizer files."""
    import gguf
    from safetensors.numpy import save_file
    gguf_path, out_dir = pathlib.Path(gguf_path), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(gguf_path))
    meta = read_metadata(reader)
    config = hf_config(meta)
    tensors = hf_tensors(reader, config)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    eos = config["eos_token_id"]
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": eos, "pad_token_id": config["pad_token_id"]}))
    if tokenizer:
        # transformers converts the GGUF's tokenizer.ggml.* fields into a fast tokenizer (no torch).
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        template = meta.get("tokenizer.chat_template")
        if template and not getattr(tok, "chat_template", None):
            tok.chat_template = template
        tok.save_pretrained(str(out_dir))
    return out_dir
