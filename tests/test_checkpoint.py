"""Checkpointer: round trip with shardings, keep-N, crash mid-save, and the stop flag."""
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax import checkpoint, parallel


def _state(mesh, seed=0):
    rng = np.random.default_rng(seed)
    w = jax.device_put(rng.normal(size=(8, 4)).astype(np.float32), parallel.batch_sharding(mesh, 2))
    return {"params": {"w": w}, "step": jnp.int32(seed), "rng": jax.random.key_data(jax.random.key(seed))}


def test_round_trip_keeps_values_shardings_and_extra(tmp_path):
    mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(mesh, step), {"data": {"epoch": 0, "index": step * 4}})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    target = checkpoint.abstract_like(_state(mesh, 0))
    restored, extra = ckpt.restore(target)
    want = _state(mesh, 3)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(want["params"]["w"]))
    assert restored["params"]["w"].sharding == want["params"]["w"].sharding
    assert int(restored["step"]) == 3 and extra == {"data": {"epoch": 0, "index": 12}}
    ckpt.close()


def test_restore_fields_reads_only_the_named_fields(tmp_path):
    mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _state(mesh, step))
    target = checkpoint.abstract_like(_state(mesh, 0))
    got = ckpt.restore_fields({"params": target["params"], "step": target["step"]}, step=1)
    want = _state(mesh, 1)
    assert set(got) == {"params", "step"}  # rng not read
    np.testing.assert_array_equal(np.asarray(got["params"]["w"]), np.asarray(want["params"]["w"]))
    assert isinstance(got["params"]["w"], jax.Array) and got["params"]["w"].sharding == want["params"]["w"].sharding
    assert int(got["step"]) == 1
    with pytest.raises(KeyError, match=r"step 2 has no \['opt_state'\]\['w'\]"):  # never the abstract back
        ckpt.restore_fields({"opt_state": target["params"]})
    ckpt.close()


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.Checkpointer(tmp_path).restore({"x": jax.ShapeDtypeStruct((1,), jnp.float32)})


def test_a_broken_step_folder_is_named_when_it_cannot_restore(tmp_path):
    """A stray, empty step folder is taken as the latest: the error names it (orbax's says neither the
    folder nor the step) and how to resume from an earlier one."""
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, _state(mesh), {"a": 1})
    ckpt.close()
    (tmp_path / "7").mkdir()
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    with pytest.raises(RuntimeError, match=rf"cannot restore checkpoint {tmp_path}/7: .*remove that step folder"):
        ckpt.restore(checkpoint.abstract_like(_state(mesh)))
    ckpt.close()


def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    """A process killed while writing step 2 must leave step 1 restorable and step 2 absent."""
    script = textwrap.dedent(f"""
        import os, signal, jax, jax.numpy as jnp
        from lrpo_jax import checkpoint
        c = checkpoint.Checkpointer({str(tmp_path)!r}, async_save=False)
        c.save(1, {{"w": jnp.ones((4,))}}, {{"ok": 1}}); c.wait()
        big = {{"w": jnp.ones((4,)), "big": jnp.ones((64, 1024, 1024))}}
        c2 = checkpoint.Checkpointer({str(tmp_path)!r}, async_save=True)
        c2.save(2, big, {{"ok": 2}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "XLA_FLAGS": ""}, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    c = checkpoint.Checkpointer(tmp_path)
    assert c.latest_step() == 1
    state, extra = c.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert extra == {"ok": 1} and float(state["w"].sum()) == 4.0


def test_stop_request_flag():
    with checkpoint.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
