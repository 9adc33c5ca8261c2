"""Two JAX processes on localhost (gloo CPU collectives) agree with one process."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, env, timeout=240):
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.multiprocess
def test_sharded_loss_and_grad_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPO_")}
    env["JAX_PLATFORMS"] = "cpu"
    tool = [sys.executable, "-m", "lrpo_jax.tools.distributed_check", "--mesh", "data=2,fsdp=2,tensor=1"]
    _run(["bash", "launch/local_multiprocess.sh", *tool, "--out", str(tmp_path / "multi.npz")],
         {**env, "NPROC": "2", "DEVICES": "2"})
    _run([*tool, "--out", str(tmp_path / "single.npz")],
         {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert int(multi["processes"]) == 2 and int(single["processes"]) == 1
    assert int(multi["devices"]) == int(single["devices"]) == 4
    assert bool(multi["stop_seen"]) and not bool(multi["stop_none"])  # process 1's flag reached process 0
    assert not bool(multi["rewards_differ"])  # process 1 holds process 0's rewards after the broadcast
    meta = ("loss", "loss_local", "processes", "devices", "stop_seen", "stop_none", "rewards_differ")
    grads = [k for k in single.files if k not in meta]
    assert grads and set(grads) == set(multi.files) - set(meta)
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-6)
    np.testing.assert_allclose(multi["loss_local"], single["loss"], rtol=1e-6)
    for k in grads:
        np.testing.assert_allclose(multi[k], single[k], rtol=1e-5, atol=1e-7, err_msg=k)
