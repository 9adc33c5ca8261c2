"""Encoder parity with transformers' PyTorch ModernBertModel / XLMRobertaModel / BertModel (fp32).

Weights go torch model -> save_pretrained -> encoder_import.load_encoder, so the import tables are
tested together with the modules. Tolerance: 1e-4 max-abs on real (non-pad) tokens.
"""
import dataclasses

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from flax import nnx
from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel, XLMRobertaConfig, XLMRobertaModel

from lrpo_jax.models import encoder, encoder_import
from lrpo_jax.models.encoder import Encoder, EncoderConfig

TOL = 1e-4


def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights everywhere (HF init leaves norms at 1 and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _import(model: torch.nn.Module, tmp_path):
    model.save_pretrained(tmp_path)
    cfg, state = encoder_import.load_encoder(tmp_path)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
    return cfg, graphdef, state


def _forward(graphdef, state, tokens, mask, token_type_ids=None):
    fn = jax.jit(lambda s, t, m, tt: nnx.merge(graphdef, s)(t, m, tt))
    return np.asarray(fn(state, jnp.asarray(tokens), jnp.asarray(mask), token_type_ids))


def _right_padded(lengths, vocab, pad, seed=0, lo=3):
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = rng.integers(lo, vocab, (len(lengths), t))
    mask = np.zeros((len(lengths), t), np.int32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad
    return ids, mask


def _max_err_on_real(ours, ref, mask):
    return max(float(np.abs(ours[i, m > 0] - ref[i, m > 0]).max()) for i, m in enumerate(mask))


def _modernbert_config(**kw):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
                local_attention=8, global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                cls_token_id=1, sep_token_id=2, global_rope_theta=160000.0, local_rope_theta=10000.0)
    base.update(kw)
    return ModernBertConfig(**base)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("biases", [False, True])
def test_modernbert_tiny_parity(tmp_path, attn, biases):
    hc = _modernbert_config(attn_implementation=attn, norm_bias=biases, attention_bias=biases, mlp_bias=biases)
    model = _perturb(ModernBertModel(hc))
    cfg, graphdef, state = _import(model, tmp_path)
    assert cfg.layer_types == ("global", "local", "global", "local", "global") and cfg.local_window == 8
    ids, mask = _right_padded([21, 13, 5], 97, pad=0)  # 21 > the +-4 window: local layers matter
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    assert _max_err_on_real(_forward(graphdef, state, ids, mask), ref, mask) <= TOL


def test_modernbert_window_and_thetas_matter(tmp_path):
    """The parity above must be able to fail: a wrong window or local theta gives visible errors."""
    model = _perturb(ModernBertModel(_modernbert_config(attn_implementation="sdpa")))
    cfg, graphdef, state = _import(model, tmp_path)
    ids, mask = _right_padded([21, 13], 97, pad=0)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    for wrong in (dict(local_window=cfg.local_window + 2), dict(local_rope_theta=cfg.global_rope_theta)):
        bad = Encoder(dataclasses.replace(cfg, **wrong), rngs=nnx.Rngs(0))
        gd, _ = nnx.split(bad)
        assert _max_err_on_real(_forward(gd, state, ids, mask), ref, mask) > 1e-3, wrong


def test_mmbert_small_shaped_parity(tmp_path):
    """mmBERT-small shape (22 layers, 384 hidden, 6 heads, 1152 GLU, +-64 window, theta 160k/160k);
    vocab reduced from 256000 to 2048 for speed. Sequences of 200/150 tokens cross the window."""
    hc = ModernBertConfig(vocab_size=2048, hidden_size=384, intermediate_size=1152, num_hidden_layers=22,
                          num_attention_heads=6, local_attention=128, global_attn_every_n_layers=3,
                          pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1,
                          global_rope_theta=160000.0, local_rope_theta=160000.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = ModernBertModel(hc).eval()
    cfg, graphdef, state = _import(model, tmp_path)
    assert sum(t == "global" for t in cfg.layer_types) == 8 and cfg.head_dim == 64
    ids, mask = _right_padded([200, 150], 2048, pad=0)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    err = _max_err_on_real(_forward(graphdef, state, ids, mask), ref, mask)
    assert err <= TOL, err


def test_modernbert_hub_style_config():
    """Hub-era flat keys (mmBERT's config.json): global_rope_theta / local_rope_theta / every-n layers."""
    hub = dict(model_type="modernbert", vocab_size=256000, hidden_size=384, intermediate_size=1152,
               num_hidden_layers=22, num_attention_heads=6, global_attn_every_n_layers=3, local_attention=128,
               global_rope_theta=160000, local_rope_theta=None, norm_eps=1e-5, norm_bias=False,
               hidden_activation="gelu", pad_token_id=0)
    cfg = EncoderConfig.from_hf(hub)
    assert cfg.layer_types[:4] == ("global", "local", "local", "global")
    assert cfg.local_rope_theta == 160000.0  # None falls back to the global theta
    with pytest.raises(ValueError, match="hidden_activation"):
        EncoderConfig.from_hf({**hub, "hidden_activation": "silu"})


def test_left_padding_and_packing_match_single_sequences(tmp_path):
    """Per-row positions from the mask: left padding and several sequences packed in one row give the
    same hidden states as each sequence alone (the unpadded/FA2 semantics)."""
    model = _perturb(ModernBertModel(_modernbert_config(attn_implementation="sdpa")))
    _, graphdef, state = _import(model, tmp_path)
    rng = np.random.default_rng(3)
    a, b = rng.integers(3, 97, 11), rng.integers(3, 97, 7)
    alone = [_forward(graphdef, state, s[None], np.ones((1, len(s)), np.int32))[0] for s in (a, b)]
    left = _forward(graphdef, state, np.concatenate([[0] * 4, b])[None], np.array([[0] * 4 + [1] * 7]))
    np.testing.assert_allclose(left[0, 4:], alone[1], atol=TOL)
    packed_ids = np.concatenate([a, b, [0, 0]])[None]
    packed_mask = np.array([[1] * 11 + [2] * 7 + [0, 0]])
    packed = _forward(graphdef, state, packed_ids, packed_mask)[0]
    np.testing.assert_allclose(packed[:11], alone[0], atol=TOL)
    np.testing.assert_allclose(packed[11:18], alone[1], atol=TOL)
    pooled = np.asarray(encoder.segment_mean_pool(jnp.asarray(packed[None]), jnp.asarray(packed_mask), 2))[0]
    np.testing.assert_allclose(pooled, [alone[0].mean(0), alone[1].mean(0)], atol=TOL)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_xlmr_tiny_parity_with_token_types(tmp_path, attn):
    hc = XLMRobertaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=40, type_vocab_size=2,
                          attn_implementation=attn)
    model = _perturb(XLMRobertaModel(hc, add_pooling_layer=False))
    cfg, graphdef, state = _import(model, tmp_path)
    assert cfg.family == "xlmr" and cfg.position_offset == 2 and cfg.norm_eps == 1e-12
    ids, mask = _right_padded([20, 13, 5], 97, pad=1)
    types = np.random.default_rng(1).integers(0, 2, ids.shape)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert _max_err_on_real(_forward(graphdef, state, ids, mask, jnp.asarray(types)), ref, mask) <= TOL


def test_bert_positions_start_at_zero(tmp_path):
    hc = BertConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=32, pad_token_id=0, attn_implementation="sdpa")
    model = _perturb(BertModel(hc, add_pooling_layer=True))  # the pooler is skipped by the import table
    cfg, graphdef, state = _import(model, tmp_path)
    assert cfg.position_offset == 0
    ids, mask = _right_padded([17, 9], 97, pad=0)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    assert _max_err_on_real(_forward(graphdef, state, ids, mask), ref, mask) <= TOL


def _tiny_xlmr_tensors():
    hc = XLMRobertaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=16)
    model = XLMRobertaModel(hc, add_pooling_layer=False)
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    return EncoderConfig.from_hf(hc.to_dict()), tensors


def test_import_errors_name_the_tensor():
    cfg, tensors = _tiny_xlmr_tensors()
    encoder_import.state_from_hf(cfg, tensors)  # the untouched checkpoint loads
    with pytest.raises(encoder_import.EncoderImportError, match="encoder.layer.0.attention.self.key.weight"):
        bad = dict(tensors)
        bad["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 31), np.float32)
        encoder_import.state_from_hf(cfg, bad)
    with pytest.raises(encoder_import.EncoderImportError, match="layers.0.mlp.wo.kernel"):
        encoder_import.state_from_hf(cfg, {k: v for k, v in tensors.items() if k != "encoder.layer.0.output.dense.weight"})
    with pytest.raises(encoder_import.EncoderImportError, match="slots of .*layers.0.attn.qkv.bias"):
        encoder_import.state_from_hf(cfg, {k: v for k, v in tensors.items()
                                           if k != "encoder.layer.0.attention.self.value.bias"})
    with pytest.raises(encoder_import.EncoderImportError, match="'encoder.layer.0.attention.self.rotary'"):
        encoder_import.state_from_hf(cfg, {**tensors, "encoder.layer.0.attention.self.rotary": np.zeros(3)})
    with pytest.raises(encoder_import.EncoderImportError, match="does not have"):
        encoder_import.state_from_hf(cfg, {**tensors, "encoder.layer.1.output.dense.bias": np.zeros(32)})


def test_every_weight_has_logical_axis_names():
    cfg, tensors = _tiny_xlmr_tensors()
    state = encoder_import.state_from_hf(cfg, tensors)
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path
    specs = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.get_partition_spec(state))}
    assert tuple(specs["layers.0.attn.qkv.kernel"]) == ("embed", None, "q_heads", "head_dim")
    assert tuple(specs["embed.embedding"]) == ("vocab", "embed")


def test_pooling_and_text_helpers():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mean = np.asarray(encoder.masked_mean_pool(jnp.asarray(h), jnp.asarray(mask)))
    np.testing.assert_allclose(mean, [h[0, :3].mean(0), h[1].mean(0)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(encoder.cls_pool(jnp.asarray(h))), h[:, 0])
    unit = np.asarray(encoder.l2_normalize(jnp.asarray(mean)))
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=-1, keepdims=True), rtol=1e-6)
    assert np.asarray(encoder.l2_normalize(jnp.zeros((1, 3)))).tolist() == [[0.0, 0.0, 0.0]]
    assert encoder.e5_inputs(["a", "b"], "query") == ["query: a", "query: b"]
    assert encoder.e5_inputs(["a"]) == ["passage: a"]
    with pytest.raises(ValueError, match="kind"):
        encoder.e5_inputs(["a"], "document")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="family"):
        EncoderConfig(family="gpt", vocab_size=1, hidden_size=4, intermediate_size=4, num_layers=1, num_heads=1)
    with pytest.raises(ValueError, match="layer_types"):
        EncoderConfig(family="modernbert", vocab_size=1, hidden_size=4, intermediate_size=4, num_layers=2,
                      num_heads=1, layer_types=("global",))


def test_batch_planning_helpers_give_the_same_embeddings(tmp_path):
    """pad_batch / length_batches / pack_batch / micro_batch are layout choices only: every sentence
    vector equals the one from embedding that sentence alone."""
    model = _perturb(ModernBertModel(_modernbert_config(attn_implementation="sdpa")))
    cfg, graphdef, state = _import(model, tmp_path)
    rng = np.random.default_rng(5)
    seqs = [list(rng.integers(3, 97, n)) for n in (3, 17, 9, 40, 5, 33, 12, 1)]
    embed = jax.jit(lambda s, t, m, mb=None: encoder.sentence_embeddings(nnx.merge(graphdef, s), t, m,
                                                                       micro_batch=mb), static_argnums=3)
    alone = np.stack([np.asarray(embed(state, *encoder.pad_batch([s], 0)))[0] for s in seqs])

    tokens, mask = encoder.pad_batch(seqs, 0, multiple=16)
    assert tokens.shape == (8, 48) and mask.sum() == sum(map(len, seqs))
    np.testing.assert_allclose(np.asarray(embed(state, tokens, mask, 4)), alone, atol=TOL)
    with pytest.raises(ValueError, match="not a multiple"):
        embed(state, tokens, mask, 3)
    with pytest.raises(ValueError, match="sequence 3 has 40 tokens"):
        encoder.pad_batch(seqs, 0, length=32)

    plan = encoder.length_batches([len(s) for s in seqs], multiple=16, batch_tokens=64)
    assert sorted(i for idx, _, _ in plan for i in idx) == list(range(8))
    for idx, rows, length in plan:
        assert len(idx) <= rows and rows * length <= max(64, length)
        t, m = encoder.pad_batch([seqs[i] for i in idx] + [[]] * (rows - len(idx)), 0, length=length)
        np.testing.assert_allclose(np.asarray(embed(state, t, m))[:len(idx)], alone[idx], atol=TOL)

    t, m, place = encoder.pack_batch(seqs, 48, 0, max_segments=3, num_rows=6)
    assert t.shape == (6, 48) and (m > 0).sum() == sum(map(len, seqs)) and m.max() <= 3
    packed = jax.jit(lambda s, t, m: encoder.sentence_embeddings(nnx.merge(graphdef, s), t, m, segments=3))
    out = np.asarray(packed(state, t, m))
    np.testing.assert_allclose(out[place[:, 0], place[:, 1]], alone, atol=TOL)
    with pytest.raises(ValueError, match="need .* rows"):
        encoder.pack_batch(seqs, 48, 0, max_segments=3, num_rows=2)
