"""Benchmark plumbing: the JSON line format, and that the fast benchmarks compare equal computations."""
import json

import pytest

from lrpo_jax.bench import __main__ as bench_main
from lrpo_jax.bench import calibration, common, step


def _lines(capsys):
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]


def test_emit_ratio_direction(capsys):
    common.emit("x", 10.0, 5.0, "items/s")
    common.emit("y", 2.0, 8.0, "us", higher_is_better=False)
    x, y = _lines(capsys)
    assert set(x) >= {"name", "ours", "peer", "unit", "ratio"}
    assert x["ratio"] == 2.0 and y["ratio"] == 4.0


def test_calibration_bench_matches_the_reference_loops(capsys):
    calibration.main(["--samples", "4096", "--iters", "1"])
    lines = {rec["name"]: rec for rec in _lines(capsys)}
    assert set(lines) == {"calibration/quantile_4096", "calibration/mean_4096"}
    for rec in lines.values():
        assert rec["max_abs_diff"] < 1e-5 and rec["ours"] > 0 and rec["peer"] > 0


def test_step_summary_host_fraction_and_recompiles():
    rows = [{"step": s, "compiles": c, "time/step": 10.0, "time/sample": 4.0, "time/update": 4.0, "time/reward": 1.0}
            for s, c in ((1, 20), (2, 21), (3, 21), (4, 22))]
    out = step.summarize(rows)
    assert out["host_fraction"] == pytest.approx(0.2)
    assert out["new_compiles"] == 1 and out["no_recompile"] == 0.5
    rows[3]["shape/new_bucket"] = 1.0  # step 4 was the first to use a bucket: its compile is expected
    out = step.summarize(rows)
    assert out["no_recompile"] == 1.0 and out["steps_judged"] == 1 and out["new_bucket_steps"] == [4]
    rows[2]["compiles"] = 22  # ... but a compile on a step with known shapes still counts
    assert step.summarize(rows)["no_recompile"] == 0.0


@pytest.mark.parametrize("hf", [
    dict(model_type="modernbert", vocab_size=500, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
         num_attention_heads=4, local_attention=32, global_attn_every_n_layers=3),
    dict(model_type="xlm-roberta", vocab_size=500, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
         num_attention_heads=4, max_position_embeddings=130, type_vocab_size=1),
], ids=["modernbert", "xlmr"])
def test_encoder_flop_count_matches_xla_cost_analysis(hf):
    """The encoder bench's FLOP count (matmuls + attention) against XLA's own count of the compiled
    forward, which adds the elementwise work (norms, softmax, GELU): a few % above ours, never below.
    Leaving out attention (~20% here) or a projection would put ours outside the band."""
    import jax
    import numpy as np
    from flax import nnx

    from lrpo_jax.bench.encoder import encoder_flops
    from lrpo_jax.models import encoder
    cfg = encoder.EncoderConfig.from_hf(hf)
    graphdef, state = nnx.split(encoder.Encoder(cfg, rngs=nnx.Rngs(0)))
    b, t = 2, 128
    ones = np.ones((b, t), np.int32)
    fn = jax.jit(lambda s, x, m: encoder.sentence_embeddings(nnx.merge(graphdef, s), x, m))
    cost = fn.lower(state, ones, ones).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert 1.0 <= xla / encoder_flops(cfg, state, b, t) <= 1.12


def test_every_benchmark_is_listed_and_unknown_names_fail(capsys):
    assert {"calibration", "encoder", "forward", "reward", "router", "sampler", "step"} <= set(bench_main.available())
    assert "tunix_peer" not in bench_main.available()  # a helper run inside Tunix's venv, not a benchmark
    assert bench_main.main(["nope"]) == 2
