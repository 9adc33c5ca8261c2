"""Decoder family parity with transformers' PyTorch models (fp32), KV cache, bf16, remat, import/export."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrpo_jax.models import decoder as D
from lrpo_jax.models import hf_import

torch = pytest.importorskip("torch")
import transformers  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=160, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=160, max_position_embeddings=16384, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
    # 7 layers: local x5, global, local; window 4 < sequence length so the window matters.
    # head_dim 24 != hidden / heads and query_pre_attn_scalar 20 != head_dim: mix-ups show.
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=64, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        intermediate_size=96, vocab_size=160, sliding_window=4, query_pre_attn_scalar=20),
}
HF_CLASSES = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM,
              "gemma3": transformers.Gemma3ForCausalLM}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(family, HF model, folder written by save_pretrained, our cfg, graphdef, params)."""
    torch.manual_seed(0)
    hf_cfg = CONFIGS[request.param]()
    hf_cfg._attn_implementation = "eager"
    model = HF_CLASSES[request.param](hf_cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so (1 + w) vs w mistakes show; HF starts biases at 0
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    cfg, params = hf_import.load_decoder(folder)
    graphdef, _ = hf_import.abstract_decoder(cfg)
    return request.param, model, folder, cfg, graphdef, params


def _batch(vocab, b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    return tokens, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def _hf_logits(model, tokens, mask, pos):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.numpy()


def test_logits_match_transformers_on_left_padded_batch(pair):
    family, model, _, cfg, graphdef, params = pair
    tokens, mask, pos = _batch(cfg.vocab_size)
    ours, cache = nnx.merge(graphdef, params)(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))
    assert cache is None and ours.dtype == jnp.float32
    err = np.abs(np.asarray(ours) - _hf_logits(model, tokens, mask, pos))[mask.astype(bool)].max()
    assert err <= 1e-4, (family, err)


@pytest.mark.parametrize("pair", ["llama"], indirect=True)
def test_llama3_rope_scaling_matches_transformers_at_long_distances(pair):
    """Tokens thousands of positions apart (position ids 0, 1000, 2000, ...), where Llama 3's scaling
    changes the low-frequency bands: RoPE sees only distances, so 12 neighbouring positions pass with
    the scaling left out."""
    family, model, _, cfg, graphdef, params = pair
    tokens, _, _ = _batch(cfg.vocab_size, seed=2)
    mask = np.ones_like(tokens)
    pos = np.broadcast_to(np.arange(tokens.shape[1]) * 1000, tokens.shape).copy()
    ours = nnx.merge(graphdef, params)(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))[0]
    np.testing.assert_allclose(np.asarray(ours), _hf_logits(model, tokens, mask, pos), atol=2e-4, rtol=1e-4)


def test_right_padding_matches_too(pair):
    family, model, _, cfg, graphdef, params = pair
    tokens, mask, _ = _batch(cfg.vocab_size, seed=1)
    mask = mask[:, ::-1].copy()  # pads on the right
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ours, _ = nnx.merge(graphdef, params)(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))
    err = np.abs(np.asarray(ours) - _hf_logits(model, tokens, mask, pos))[mask.astype(bool)].max()
    assert err <= 1e-4, (family, err)


def test_kv_cache_prefill_and_decode_equal_full_forward(pair):
    family, _, _, cfg, graphdef, params = pair
    tokens, mask, pos = _batch(cfg.vocab_size, seed=2)
    b, t = tokens.shape
    model = nnx.merge(graphdef, params)
    full, _ = model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))
    slots = t + 3
    valid = np.zeros((b, slots), np.int64)
    valid[:, :8] = mask[:, :8]
    cache = D.init_cache(cfg, b, slots)
    out, cache = model(jnp.asarray(tokens[:, :8]), jnp.asarray(pos[:, :8]), jnp.asarray(valid), cache=cache,
                       cache_index=jnp.int32(0))
    np.testing.assert_allclose(np.asarray(out)[mask[:, :8] > 0], np.asarray(full)[:, :8][mask[:, :8] > 0], atol=1e-5)
    step = jax.jit(lambda p, tok, ps, v, c, i: nnx.merge(graphdef, p)(tok, ps, v, cache=c, cache_index=i))
    for i in range(8, t):
        valid[:, i] = 1
        out, cache = step(params, jnp.asarray(tokens[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]),
                          jnp.asarray(valid), cache, jnp.int32(i))
        np.testing.assert_allclose(np.asarray(out)[:, 0], np.asarray(full)[:, i], atol=1e-5, err_msg=f"{family} {i}")


def test_bf16_compute_and_remat(pair):
    family, _, folder, cfg, _, params = pair
    tokens, mask, pos = _batch(cfg.vocab_size, seed=3)
    args = (jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))

    def loss(cfg_, p):
        g, _ = hf_import.abstract_decoder(cfg_)
        logits, _ = nnx.merge(g, p)(*args)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 1] * mask)

    base, g0 = jax.value_and_grad(lambda p: loss(cfg, p))(params)
    rcfg = D.DecoderConfig.from_hf(folder, remat=True)
    remat, g1 = jax.value_and_grad(lambda p: loss(rcfg, p))(params)
    np.testing.assert_allclose(remat, base, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    bcfg = D.DecoderConfig.from_hf(folder, dtype="bfloat16")
    g, _ = hf_import.abstract_decoder(bcfg)
    low, _ = nnx.merge(g, params)(*args)
    full, _ = nnx.merge(hf_import.abstract_decoder(cfg)[0], params)(*args)
    assert low.dtype == jnp.float32  # logits always fp32
    rel = np.abs(np.asarray(low) - np.asarray(full)).max() / np.abs(np.asarray(full)).max()
    assert rel < 0.05, (family, rel)


def test_export_round_trip_loads_in_transformers(pair, tmp_path):
    family, model, _, cfg, graphdef, params = pair
    hf_import.save_decoder(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    tokens, mask, pos = _batch(cfg.vocab_size, seed=4)
    np.testing.assert_allclose(_hf_logits(reloaded, tokens, mask, pos), _hf_logits(model, tokens, mask, pos),
                               atol=1e-5)
    cfg2, params2 = hf_import.load_decoder(tmp_path)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(a, b)


def test_gemma3_multimodal_config_loads_text_model():
    text = CONFIGS["gemma3"]().to_dict()
    nested = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
              "vision_config": {"hidden_size": 8}}
    cfg = D.DecoderConfig.from_hf(nested)
    assert cfg.family == "gemma3" and cfg.layer_types == ("local",) * 5 + ("global", "local")
    assert cfg.local_rope_theta == 10000.0 and cfg.rope_theta == 1e6 and cfg.sliding_window == 4
    old_style = {k: v for k, v in text.items() if k not in ("rope_parameters", "layer_types")}
    old_style.update(rope_theta=1e6, rope_local_base_freq=10000.0, sliding_window_pattern=6,
                     rope_scaling={"rope_type": "linear", "factor": 8.0})
    cfg_old = D.DecoderConfig.from_hf(old_style)
    assert cfg_old.layer_types == cfg.layer_types and dict(cfg_old.rope_scaling)["factor"] == 8.0


def test_gemma3_4b_sparse_multimodal_config_gets_transformers_defaults():
    """gemma-3-4b-it's config.json lists only what differs from Gemma3TextConfig's defaults; the rest
    (heads, vocabulary, RoPE bases) must come from those defaults, as HF loads it, not a KeyError or
    rope_theta 1e4. EOS ids the text part lacks come from the top level."""
    sparse = {"model_type": "gemma3", "eos_token_id": [1, 106],
              "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                              "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                              "sliding_window": 1024}, "vision_config": {"hidden_size": 8}}
    cfg = D.DecoderConfig.from_hf(sparse)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (8, 4, 256, 262208)
    assert cfg.rope_theta == 1e6 and cfg.local_rope_theta == 1e4 and dict(cfg.rope_scaling)["factor"] == 8.0
    assert cfg.layer_types == (("local",) * 5 + ("global",)) * 5 + ("local",) * 4 and cfg.sliding_window == 1024
    assert cfg.query_pre_attn_scalar == 256 and cfg.eos_token_ids == (1, 106) and cfg.tie_embeddings


def test_import_errors_name_every_bad_tensor(tmp_path):
    from safetensors.numpy import save_file
    cfg = D.DecoderConfig.from_hf(CONFIGS["llama"]().to_dict())
    hf_import.save_decoder(tmp_path, cfg, nnx.split(D.Decoder(cfg, rngs=nnx.Rngs(0)))[1])
    from safetensors.numpy import load_file
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-4]
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(hf_import.WeightImportError) as err:
        hf_import.load_decoder(tmp_path)
    msg = str(err.value)
    assert "missing: layers/1/mlp/up" in msg and "unexpected: model.extra.weight" in msg
    assert "mis-shaped: model.layers.0.self_attn.q_proj.weight" in msg
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        D.DecoderConfig.from_hf({"model_type": "bert"})
    json.dumps(hf_import.hf_config_dict(cfg))  # serialisable


def test_generation_config_eos_ids_are_stop_tokens_too(tmp_path):
    """Qwen2.5-Instruct's config.json names <|im_end|> only; generate() also stops at
    generation_config.json's <|endoftext|>, so the rollouts must too."""
    cfg = CONFIGS["qwen2"]().to_dict()
    cfg.update(eos_token_id=151645, bos_token_id=151643, pad_token_id=None, vocab_size=151936)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert D.DecoderConfig.from_hf(tmp_path).eos_token_ids == (151645,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    dcfg = D.DecoderConfig.from_hf(tmp_path)
    assert dcfg.eos_token_ids == (151645, 151643) and dcfg.pad_token_id == 151645  # pad from config.json
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id must be an int"):
        D.DecoderConfig.from_hf(tmp_path)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_defaults_for_keys_a_config_omits_are_transformers(family):
    """A config.json without tie_word_embeddings ties as the transformers class does (Qwen2: untied)."""
    d = CONFIGS[family]().to_dict()
    del d["tie_word_embeddings"]
    hf = type(CONFIGS[family]())(**{k: v for k, v in d.items() if k != "model_type"})
    assert D.DecoderConfig.from_hf(d).tie_embeddings == hf.tie_word_embeddings


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_old_style_rope_scaling_survives_export(family):
    """`rope_scaling: {"type": "linear"}` (pre-4.45 spelling) must not be written next to
    rope_type 'default', which transformers would read as no scaling."""
    d = {k: v for k, v in CONFIGS[family]().to_dict().items() if k != "rope_parameters"}
    d.update(rope_theta=1e4, rope_scaling={"type": "linear", "factor": 4.0})
    cfg = D.DecoderConfig.from_hf(d)
    assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 4.0}
    exported = hf_import.hf_config_dict(cfg)
    hf = type(CONFIGS[family]())(**{k: v for k, v in exported.items() if k != "model_type"})
    assert hf.rope_parameters["rope_type"] == "linear" and hf.rope_parameters["factor"] == 4.0
    assert D.DecoderConfig.from_hf(exported) == cfg


@pytest.mark.parametrize("pair", ["gemma3"], indirect=True)
def test_multimodal_gemma3_checkpoint_layouts_load_the_text_weights(pair, tmp_path):
    """transformers >= 4.52 saves Gemma3ForConditionalGeneration as model.language_model.*,
    model.vision_tower.*, model.multi_modal_projector.*; older versions as language_model.model.*,
    vision_tower.*, multi_modal_projector.*. Both load as the text decoder, the vision parts skipped."""
    _, _, folder, cfg, _, params = pair
    from safetensors.numpy import load_file, save_file
    text = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    for new, old in (("model.language_model.", "model."), ("language_model.model.", "model.")):
        vision = "model." if new.startswith("model.") else ""
        out = tmp_path / new.rstrip(".")
        out.mkdir()
        renamed = {new + k[len(old):]: v for k, v in tensors.items()}
        renamed[vision + "vision_tower.vision_model.post_layernorm.weight"] = np.ones(8, np.float32)
        renamed[vision + "multi_modal_projector.mm_input_projection_weight"] = np.ones((8, 4), np.float32)
        save_file(renamed, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text,
                                                     "vision_config": {"hidden_size": 8}}))
        cfg2, params2 = hf_import.load_decoder(out)
        assert cfg2 == cfg
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family, change, message", [
    ("llama", {"hidden_act": "gelu"}, r"\{'hidden_act': 'gelu'\} is not supported"),
    ("qwen2", {"hidden_act": "relu"}, r"\{'hidden_act': 'relu'\} is not supported"),
    ("gemma3", {"hidden_activation": "gelu"}, r"\{'hidden_activation': 'gelu'\} is not supported"),
    ("gemma3", {"use_bidirectional_attention": True}, r"\{'use_bidirectional_attention': True\}"),
    ("llama", {"attention_bias": True}, r"\{'attention_bias': True\} is not supported"),
    ("llama", {"mlp_bias": True}, r"\{'mlp_bias': True\} is not supported"),
    ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}},
     r"RoPE scaling on the sliding-window layers .* is not supported"),
])
def test_architecture_switches_we_do_not_implement_are_refused(family, change, message):
    """Each of these computed something else without a word (up to 4 logits off against HF)."""
    d = {**CONFIGS[family]().to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        D.DecoderConfig.from_hf(d)


def test_keys_a_gemma3_config_omits_take_transformers_defaults():
    """A gemma3_text config.json without rope_theta / head_dim / query_pre_attn_scalar loads as HF loads
    it (1e6, 256, 256), not with generic defaults (1e4, hidden / heads, head_dim)."""
    sparse = {"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 6,
              "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 1000}
    cfg = D.DecoderConfig.from_hf(sparse)
    hf = transformers.Gemma3TextConfig(**{k: v for k, v in sparse.items() if k != "model_type"})
    assert (cfg.rope_theta, cfg.head_dim, cfg.query_pre_attn_scalar) == (1e6, hf.head_dim, hf.query_pre_attn_scalar)
    assert cfg.head_dim == 256 and cfg.local_rope_theta == 1e4


def test_gguf_rope_scaling_and_query_scalar_are_converted():
    """llama.cpp stores linear RoPE scaling as {arch}.rope.scaling.type/factor (gemma-3-4b and up); Gemma 3
    27B (62 layers) scales queries by hidden / heads, the others by head_dim."""
    from lrpo_jax.models import gguf_convert
    meta = {"general.architecture": "gemma3", "gemma3.attention.head_count": 8, "gemma3.embedding_length": 2560,
            "gemma3.feed_forward_length": 10240, "gemma3.block_count": 34, "gemma3.attention.layer_norm_rms_epsilon": 1e-6,
            "gemma3.context_length": 131072, "gemma3.attention.key_length": 256, "gemma3.rope.freq_base": 1e6,
            "gemma3.attention.sliding_window": 1024, "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 8.0, "gemma3.vocab_size": 262208}
    cfg = D.DecoderConfig.from_hf(gguf_convert.hf_config(meta))
    assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 8.0} and cfg.query_pre_attn_scalar == 256
    big = {**meta, "gemma3.block_count": 62, "gemma3.embedding_length": 5376, "gemma3.attention.head_count": 32,
           "gemma3.attention.key_length": 128}
    assert gguf_convert.hf_config(big)["query_pre_attn_scalar"] == 168
    with pytest.raises(gguf_convert.GGUFConversionError, match=r"gemma3.rope.scaling.type='yarn' is not converted"):
        gguf_convert.hf_config({**meta, "gemma3.rope.scaling.type": "yarn"})
