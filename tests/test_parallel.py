"""Mesh construction, logical->mesh rules and sharding helpers on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lrpo_jax import parallel


class Tiny(nnx.Module):
    """Weights shaped like a decoder's, annotated with logical axis names."""

    def __init__(self, vocab=64, d=32, mlp=48, heads=4, kv=1, hd=8):
        def param(shape, names):
            return nnx.Param(jnp.ones(shape, jnp.float32), out_sharding=names, eager_sharding=False)
        self.embed = param((vocab, d), ("vocab", "embed"))
        self.q = param((d, heads, hd), ("embed", "q_heads", "head_dim"))
        self.k = param((d, kv, hd), ("embed", "kv_heads", "head_dim"))
        self.up = param((d, mlp), ("embed", "mlp"))
        self.norm = param((d,), ("norm",))


@pytest.mark.parametrize("axes,shape", [
    ((("data", -1), ("fsdp", 1), ("tensor", 1)), {"data": 8, "fsdp": 1, "tensor": 1}),
    ((("data", 2), ("fsdp", 2), ("tensor", 2)), {"data": 2, "fsdp": 2, "tensor": 2}),
    ({"fsdp": -1, "data": 1, "tensor": 2}, {"data": 1, "fsdp": 4, "tensor": 2}),
])
def test_make_mesh_shapes_and_auto_axes(axes, shape):
    mesh = parallel.make_mesh(axes)
    assert dict(mesh.shape) == shape
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("axes,msg", [
    ((("data", 3), ("fsdp", 1), ("tensor", 1)), "divide the 8 devices"),
    ((("data", -1), ("fsdp", -1), ("tensor", 1)), "at most one axis may be -1"),
    ((("data", 2), ("tensor", 4)), "exactly the axes"),
    ((("data", 2), ("fsdp", 2), ("tensor", 1)), "uses 4 devices"),
])
def test_make_mesh_errors_name_the_problem(axes, msg):
    with pytest.raises(ValueError, match=msg):
        parallel.make_mesh(axes)


def test_logical_rules_and_divisibility_fallback():
    mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    assert parallel.logical_to_mesh(("vocab", "embed"), (64, 32), mesh) == P("tensor", "fsdp")
    assert parallel.logical_to_mesh(("embed", "q_heads", "head_dim"), (32, 4, 8), mesh) == P("fsdp", "tensor")
    # One KV head cannot be split over tensor=2: replicated on that dimension.
    assert parallel.logical_to_mesh(("embed", "kv_heads", "head_dim"), (32, 1, 8), mesh) == P("fsdp")
    assert parallel.logical_to_mesh(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"))
    with pytest.raises(KeyError, match="'nonsense' has no partitioning rule"):
        parallel.logical_to_mesh(("nonsense",), (4,), mesh)
    _, state = nnx.split(Tiny())
    notes = parallel.describe(state, mesh)
    assert len(notes) == 1 and notes[0].startswith("k ")


def test_fsdp8_parameter_bytes_per_device():
    mesh = parallel.make_mesh((("data", 1), ("fsdp", -1), ("tensor", 1)))
    _, state = nnx.split(Tiny(vocab=256, d=64, mlp=128, heads=8, kv=8))
    shardings = parallel.param_shardings(state, mesh)
    placed = jax.device_put(state, shardings)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    per_dev = parallel.bytes_per_device(placed)
    assert len(per_dev) == 8
    slack = 64 * 4  # the replicated 1-D norm
    assert max(per_dev.values()) <= total / 8 + slack


def test_optimizer_state_follows_param_shardings():
    mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    _, state = nnx.split(Tiny())
    psh = parallel.param_shardings(state, mesh)
    params = jax.device_put(state, psh)
    opt = optax.adamw(1e-3)
    opt_state = jax.eval_shape(opt.init, params)
    osh = parallel.tree_shardings_like(opt_state, params, psh, mesh)
    adam = osh[0]
    flat_p = jax.tree.leaves(psh, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    assert jax.tree.leaves(adam.mu, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding)) == flat_p
    assert adam.count.spec == P()
    init = jax.jit(opt.init, out_shardings=osh)(params)
    assert init[0].mu["q"][...].sharding.spec == P("fsdp", "tensor")


def test_shard_batch_and_divisibility_error():
    mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    batch = {"tokens": np.arange(8 * 3).reshape(8, 3), "w": np.ones(8)}
    out = parallel.shard_batch(batch, mesh)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
    with pytest.raises(ValueError, match="not divisible by the data-parallel mesh size 4"):
        parallel.batch_sharding(mesh, 2, batch_size=6)
    cache = parallel.kv_cache_sharding(mesh, num_kv_heads=1)
    assert cache.spec == P(("data", "fsdp"), None, None, None)
    assert parallel.kv_cache_sharding(mesh, num_kv_heads=4).spec == P(("data", "fsdp"), None, "tensor", None)


def test_distributed_start_up_is_detected_from_the_launcher(monkeypatch):
    """Which environments call jax.distributed.initialize (mocked here): a lone process never does."""
    from unittest import mock
    for var in ("LRPO_COORDINATOR", "SLURM_NTASKS", "SLURM_PROCID", "LRPO_DISTRIBUTED", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    with mock.patch.object(jax.distributed, "initialize") as init, \
            mock.patch.object(jax.distributed, "is_initialized", return_value=False, create=True):
        assert not parallel.maybe_initialize_distributed() and init.call_count == 0
        monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0")  # one host: nothing to join
        assert not parallel.maybe_initialize_distributed()
        for var, value in (("LRPO_DISTRIBUTED", "1"), ("TPU_WORKER_HOSTNAMES", "t0,t1")):
            monkeypatch.setenv(var, value)
            assert parallel.maybe_initialize_distributed() and init.call_args == mock.call()
            monkeypatch.delenv(var)
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert parallel.maybe_initialize_distributed() and init.call_count == 3
