"""Test environment: CPU only, 8 fake devices for sharding tests, no model hub."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One XLA compilation cache per test session (CI passes one folder to both sessions): the smoke
# config's programs, compiled by the first test, load from disk in every later test and subprocess.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lrpo_xla_cache_")
# = lrpo_jax.compile_cache.MIN_COMPILE_SECONDS, as a literal: importing it would import jax before this is set.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mgsm_dir() -> pathlib.Path:
    d = SHARED_DATA / "mgsm"
    if not d.is_dir():
        pytest.skip(f"shared MGSM data not found at {d}")
    return d


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One 3-step smoke training run (online calibration on) shared by the tests that read a workdir
    (trainer, evaluate, colabs): training it once keeps the default suite fast."""
    import importlib.util

    from lrpo_jax import trainer
    spec = importlib.util.spec_from_file_location("smoke_cfg_shared", REPO / "configs" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # $LRPO_TEST_SMOKE_DIR (set by .ci/run) keeps the run between CI's two pytest sessions: the second
    # session's `train` finds the finished run, restores it and does no new step.
    shared = os.environ.get("LRPO_TEST_SMOKE_DIR")
    workdir = pathlib.Path(shared) if shared else tmp_path_factory.mktemp("smoke_run")
    return workdir, trainer.train(mod.get_config("steps=3,online=0.5"), str(workdir))


@pytest.fixture()
def swapped_model_folders(tmp_path):
    """(a Hugging Face model folder, a training workdir) as bare as the swapped-flag checks need."""
    import json
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    wd = tmp_path / "run"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps({"policy": {"source": "shipped:gemma3_270m"}}))
    return hf, wd
