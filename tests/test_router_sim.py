"""Router simulator: convergence to the known best arm per cell, collapse under a same-language
reward bias, recovery with mean calibration (configs/router_sim.py, seed 0, 60 router updates)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lrpo_jax import router_log, router_sim

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("router_sim_config", REPO / "configs" / "router_sim.py")
sim_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_config)


@pytest.fixture(scope="module")
def results():
    cfg = sim_config.get_config()
    return {name: router_sim.run_scenario(cfg, name) for name in cfg.scenarios}


def test_clean_world_converges_to_the_best_arm_in_every_cell(results):
    m = results["clean"]["metrics"]
    assert m["updates"] == 60 and len(m["cells"]) == 10  # 4 routed topics + 6 regions (Translation is fixed)
    for cell, v in m["cells"].items():
        assert v["best_prob"] > 0.8, (cell, v)
    assert m["cumulative_regret"] < 0.35 * m["uniform_cumulative_regret"]
    assert m["final_regret_per_rollout"] < 0.1 * m["uniform_regret_per_rollout"]
    # Traced probabilities are after step s at the next step's tau, like the trainer's router.jsonl.
    tau = np.asarray(results["clean"]["trace"]["tau"])
    np.testing.assert_allclose(tau[:3], [0.99, 0.99 ** 2, 0.99 ** 3], rtol=1e-6)


def test_reference_min_count_plateaus_lower(results):
    ours, ref = results["clean"]["metrics"], results["clean_min_count_1"]["metrics"]
    assert ref["mean_best_prob"] < ours["mean_best_prob"] - 0.05
    assert ref["cumulative_regret"] > ours["cumulative_regret"]


def test_same_language_bias_collapses_and_mean_calibration_recovers(results):
    raw, cal = results["bias_raw"], results["bias_calibrated"]
    world = raw["world"]
    probs = raw["trace"]["probs"][-1]
    best = np.array([v["best_prob"] for v in raw["metrics"]["cells"].values()])
    assert np.median(best) < 0.1 and best.mean() < 0.3
    # Where it collapsed, the router prefers a language the cell's questions are asked in.
    scored = np.flatnonzero(world.scored)
    collapsed = [c for c, p in zip(scored, best) if p < 0.2]
    onto_question_lang = [c for c in collapsed if world.question_langs[c, probs[c].argmax()] > 0]
    assert len(collapsed) >= 7 and len(onto_question_lang) >= len(collapsed) - 1
    for cell, v in cal["metrics"]["cells"].items():
        assert v["best_prob"] > 0.8, (cell, v)
    assert cal["metrics"]["cumulative_regret"] < 0.5 * raw["metrics"]["cumulative_regret"]


def test_mean_calibration_table_removes_the_pair_bias(results):
    world = results["bias_calibrated"]["world"]
    scenario = sim_config.SCENARIOS["bias_calibrated"]
    want = world.bias - world.bias.mean()
    # mean of 30 equivalent pairs with noise sd 0.02: estimation error sd 0.02 / sqrt(30) ~ 0.0037
    np.testing.assert_allclose(world.shift, want, atol=5 * scenario["noise_scale"] / np.sqrt(30))
    assert np.diag(world.shift).min() > 0.03  # the same-language bonus (0.05) is what gets subtracted
    assert np.abs(results["bias_raw"]["world"].shift).max() == 0.0


def test_world_errors_name_the_cell():
    cfg = sim_config.get_config("scenarios=clean")
    cfg.world.topic_cells = (("Translation", "en", "zh:1", 1.0),)
    with pytest.raises(ValueError, match=r"world.topic_cells\[0\]: best language must be empty exactly for fixed"):
        router_sim.run_scenario(cfg, "clean")
    cfg = sim_config.get_config("scenarios=clean")
    cfg.world.region_cells = (("Atlantis", "en", "zh:1", 1.0),)
    with pytest.raises(KeyError, match=r"unknown region 'Atlantis' \(world.region_cells\[0\]\)"):
        router_sim.run_scenario(cfg, "clean")
    with pytest.raises(ValueError, match="unknown scenarios \\['sunny'\\]"):
        sim_config.get_config("scenarios=sunny")
    # router settings get the trainer's checks, before any simulation (not a ZeroDivisionError at the end)
    for key, value, msg in (("update_every", 0, r"config.router.update_every=0 must be within \[1, inf\]"),
                            ("tau_init", 0.0, r"config.router.tau_init=0.0 must be within \(0.0, inf\]"),
                            ("alpha", 1.5, r"config.router.alpha=1.5 must be within \(0.0, 1.0\]"),
                            ("norm", "zcore", r"config.router.norm='zcore'; expected one of")):
        cfg = sim_config.get_config("scenarios=clean")
        cfg.router[key] = value
        with pytest.raises(ValueError, match=msg):
            router_sim.run_scenario(cfg, "clean")
    for key in ("steps", "prompts_per_step", "log_every"):  # used to fail after the run, or give NaN regret
        cfg = sim_config.get_config("scenarios=clean")
        cfg[key] = 0
        with pytest.raises(ValueError, match=rf"config.{key}=0 must be within \[1, inf\]"):
            router_sim.run_scenario(cfg, "clean")


def test_cli_writes_jsonl_metrics_and_plots(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "lrpo_jax.router_sim", "--config", "configs/router_sim.py:scenarios=clean,steps=20",
         "--workdir", str(tmp_path), "--config.prompts_per_step=16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[clean] 4 updates: best-arm probability" in out.stdout
    folder = tmp_path / "clean"
    for name in ("regret.png", "probs.png", "heatmaps.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = router_log.read_log(folder / "router.jsonl")
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    assert len(recs[0]["probs"]) == 6 + 6  # every topic and region row
    row = recs[-1]["probs"]["region:China"]
    assert abs(sum(row["softmax"].values()) - 1) < 1e-4 and abs(sum(row["effective"].values()) - 1) < 1e-4
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 20 and set(metrics["cells"]["region:Japan"]) == {"best", "best_prob", "argmax", "probs"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clean"]["best_prob"]["region:Japan"] == pytest.approx(metrics["cells"]["region:Japan"]["best_prob"],
                                                                       abs=1e-3)
