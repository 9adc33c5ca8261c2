"""Metric writer: event files readable by TensorBoard, JSONL mirror, timers, compile counter."""
import json

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from lrpo_jax import metrics


def test_event_file_and_jsonl(tmp_path):
    w = metrics.MetricWriter(tmp_path)
    w.scalars(1, {"reward/mean": 0.5, "reward/lang/de": np.float32(0.25), "skip": "text"})
    w.scalars(2, {"reward/mean": 0.75})
    img = metrics.heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], "probs")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    w.image(2, "router/topic", img)
    w.text(2, "rollouts", "**de** Hallo Welt")
    w.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert acc.Scalars("reward/lang/de")[0].value == 0.25
    assert acc.Images("router/topic")[0].width == img.shape[1]
    assert acc.Tensors("rollouts")[0].tensor_proto.string_val[0].decode() == "**de** Hallo Welt"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "reward/mean": 0.5, "reward/lang/de": 0.25}, {"step": 2, "reward/mean": 0.75}]


def test_a_resumed_run_replaces_the_replayed_steps_in_tensorboard(tmp_path):
    """A crash after step 3 with the checkpoint at step 1: the resumed run logs steps 2-3 again. The
    event files must show each step once, with the resumed run's values."""
    import time
    w = metrics.MetricWriter(tmp_path)
    for step in (1, 2, 3):
        w.scalars(step, {"loss": float(step)})
    w.close()
    time.sleep(1.1)  # a new event file name (it holds the creation second)
    w = metrics.MetricWriter(tmp_path, restart_step=2)
    for step in (2, 3):
        w.scalars(step, {"loss": 10.0 * step})
    w.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricWriter(tmp_path / "off", enabled=False)
    w.scalars(1, {"a": 1.0})
    w.close()
    assert not (tmp_path / "off").exists()


def test_phase_timer_and_compile_counter():
    t = metrics.PhaseTimer()
    with t("sample"):
        pass
    with t("sample"):
        pass
    out = t.pop()
    assert set(out) == {"time/sample"} and out["time/sample"] >= 0 and t.pop() == {}
    counter = metrics.CompileCounter()
    f = jax.jit(lambda x: x * 3 + 1)
    a3, a4 = np.ones(3, np.float32), np.ones(4, np.float32)  # numpy inputs: no helper compiles
    f(a3); f(a3)
    assert counter.count == 1
    f(a4)
    assert counter.count == 2


def test_truncate_jsonl_drops_rows_after_the_restored_step(tmp_path):
    path = tmp_path / "log.jsonl"
    metrics.append_jsonl(path, [{"step": s, "x": s * 10} for s in (1, 2, 3, 2, 4)])
    assert metrics.truncate_jsonl(path, 2) == 2
    assert [json.loads(x)["x"] for x in path.read_text().splitlines()] == [10, 20, 20]
    assert metrics.truncate_jsonl(tmp_path / "missing.jsonl", 2) == 0
    # a crash mid-write leaves half a last row: dropped with the lost step, not a resume-blocking error
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert metrics.truncate_jsonl(path, 2) == 1 and path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"step": 1, "rew\n{"step": 2}\n')
    with pytest.raises(ValueError):  # a broken row inside the file is not a crash remnant
        metrics.truncate_jsonl(path, 2)


def test_compile_cache_setting(tmp_path, monkeypatch):
    from lrpo_jax import compile_cache
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/from_env")
    assert compile_cache.enable("auto") == "/tmp/from_env"  # the environment wins (tests, CI)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path))
    try:
        assert compile_cache.enable("") is None
        assert compile_cache.enable("auto") == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_SECONDS
        assert compile_cache.enable(str(tmp_path / "mine")) == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
