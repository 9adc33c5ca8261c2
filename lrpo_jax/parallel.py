"""Device mesh, logical-axis partitioning rules and sharding helpers (one host or many).

Weights carry *logical* axis names ('vocab', 'embed', 'mlp', 'q_heads', 'kv_heads', 'head_dim',
'norm'); a small rule table maps them to the mesh axes ('data', 'fsdp', 'tensor'). The same code
then runs on one CPU, a GPU node or a TPU pod slice: only the mesh shape in the config changes.
Axes are `AxisType.Auto` (classic GSPMD propagation): jax 0.10's `jax.make_mesh` would default
to Explicit axes, so we build the `Mesh` ourselves.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Batch dimensions are split over every data-parallel axis (fsdp shards weights *and* batch).
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or tuple of axes, or None = replicated). MaxText vocabulary, small set.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(axes: Sequence[tuple[str, int]] | dict = (("data", -1), ("fsdp", 1), ("tensor", 1)),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh from `(name, size)` pairs; one size may be -1 (= all remaining devices)."""
    axes = list(axes.items()) if isinstance(axes, dict) else [tuple(a) for a in axes]
    names = [a[0] for a in axes]
    if sorted(names) != sorted(MESH_AXES):
        raise ValueError(f"config.mesh must name exactly the axes {MESH_AXES}, got {names}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(a[1]) for a in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {axes}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ValueError(f"config.mesh {axes}: sizes must be positive (or -1) and divide the "
                         f"{len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(f"config.mesh {dict(zip(names, sizes))} uses {math.prod(sizes)} devices, "
                         f"but {len(devices)} are available")
    order = [names.index(a) for a in MESH_AXES]  # canonical axis order
    grid = np.asarray(devices, dtype=object).reshape([sizes[i] for i in order])
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(name, rules: dict) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in rules:
        raise KeyError(f"logical axis {name!r} has no partitioning rule; known: {sorted(rules)}")
    target = rules[name]
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_mesh(logical: Sequence[Any], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
    """Maps one array's logical axis names to a mesh PartitionSpec.

    A mesh axis is used at most once per array (first dimension wins), and a dimension whose size
    is not divisible by its mesh axes is replicated instead (e.g. Gemma-3-270M's single KV head
    under tensor=2): correctness first, and `describe` reports every such fallback.
    """
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        axes = tuple(a for a in _mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]  # drop the innermost axis until it divides
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def logical_specs(state) -> Any:
    """Pytree (same structure as `state`'s arrays) of logical names from nnx Param metadata."""
    from flax import nnx  # local: keeps this module importable without flax in tools

    def names(v):
        meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
        return tuple(meta.get("out_sharding") or meta.get("sharding_names") or ())

    return jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings(state, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
    """NamedShardings for an nnx.State (or its abstract `eval_shape` twin), from its metadata."""
    from flax import nnx

    def one(v):
        meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
        logical = tuple(meta.get("out_sharding") or ())
        return NamedSharding(mesh, logical_to_mesh(logical, v.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_size: int | None = None) -> NamedSharding:
    """Leading (batch) dimension split over data+fsdp; rest replicated."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    if batch_size is not None and axes and batch_size % math.prod(mesh.shape[a] for a in axes):
        raise ValueError(f"batch of {batch_size} rows is not divisible by the data-parallel mesh "
                         f"size {math.prod(mesh.shape[a] for a in axes)} ({dict(mesh.shape)})")
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def kv_cache_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """Per-layer cache [B, S, KV, hd]: batch over data+fsdp, KV heads over tensor when divisible."""
    lead = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    lead = None if not lead else lead[0] if len(lead) == 1 else lead
    heads = "tensor" if mesh.shape["tensor"] > 1 and num_kv_heads % mesh.shape["tensor"] == 0 else None
    return NamedSharding(mesh, P(lead, None, heads, None))


def shard_batch(batch, mesh: Mesh):
    """Places a host batch (pytree of numpy arrays holding ALL rows) on the mesh, batch-sharded.

    Every process holds the same global batch (rollouts are all-gathered after sampling), and each
    device takes its slice through a callback, so the same code serves one process or many.
    """
    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, max(x.ndim, 1))
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, batch)


def split_rows(x: jax.Array, n: int) -> jax.Array:
    """[rows, ...] -> [n, rows // n, ...], part i holding rows i, i + n, i + 2n, ...

    The batch is sharded over devices in contiguous row blocks. Strided parts keep every part spread
    over all devices (rows // n rows, a multiple of the device count, so each device contributes
    its own rows); contiguous parts would each sit on a few devices, and XLA would gather the whole
    batch onto every device and compute each micro-batch there in full.
    """
    return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)


def shard_local_batch(batch, mesh: Mesh):
    """Like `shard_batch`, for per-host input pipelines: each process passes only ITS rows (process
    i holds global rows [i*n, (i+1)*n)), and no host ever holds the whole batch."""
    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, max(x.ndim, 1))
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def to_host(tree):
    """numpy copies of (possibly multi-process, batch-sharded) arrays, identical on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (one process: the flag itself). For host-side
    decisions that lead into collectives, such as saving on a preemption signal."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def _path_key(path) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def tree_shardings_like(tree, params, param_sharding_tree, mesh: Mesh):
    """Shardings for a pytree whose leaves mirror parameters (optimizer moments, gradients).

    Each leaf takes the sharding of the parameter whose path is the longest suffix of its own
    path and whose shape matches; anything else (counts, scalars) is replicated. This covers
    optax states (`mu`, `nu` trees) without any optimizer-specific code.
    """
    p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    s_leaves = jax.tree.leaves(param_sharding_tree, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {}
    for (path, leaf), sh in zip(p_leaves, s_leaves):
        key = tuple(k for k in _path_key(path) if k != "value")
        by_path[key] = (tuple(np.shape(leaf)), sh)

    def pick(path, leaf):
        key = tuple(k for k in _path_key(path) if k != "value")
        for start in range(len(key)):
            hit = by_path.get(key[start:])
            if hit and hit[0] == tuple(np.shape(leaf)):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def bytes_per_device(tree) -> dict[int, int]:
    """Bytes of `tree`'s arrays resident on each device (by device id)."""
    out: dict[int, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def describe(state, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> list[str]:
    """Human-readable list of weights whose logical sharding had to fall back to replication."""
    from flax import nnx

    notes = []
    flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    for path, v in flat:
        logical = tuple((v.get_metadata() or {}).get("out_sharding") or ())
        spec = logical_to_mesh(logical, v.shape, mesh, rules)
        wanted = [n for n in logical if _mesh_axes_for(n, dict(rules))
                  and any(mesh.shape[a] > 1 for a in _mesh_axes_for(n, dict(rules)))]
        got = [s for s in spec if s is not None]
        if len(got) < len(wanted):
            notes.append(f"{'/'.join(_path_key(path))} {tuple(v.shape)} logical {logical} -> {spec}")
    return notes


# ------------------------------------------------------------------------------------------------
# Multi-process start-up.
# ------------------------------------------------------------------------------------------------
def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize` when this process is one of several; returns whether it did.

    Detected launchers: explicit env (LRPO_COORDINATOR, LRPO_NUM_PROCESSES, LRPO_PROCESS_ID, as our
    `launch/local_multiprocess.sh` sets), SLURM (srun; jax reads SLURM_* itself), LRPO_DISTRIBUTED=1
    (jax's own cluster detection, e.g. a gcloud TPU VM slice: `launch/tpu_vm.sh` sets it) and GKE TPU
    pods (TPU_WORKER_HOSTNAMES). On CPU the gloo collectives are selected so hosts can all-reduce.
    """
    if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
        return True
    env = os.environ
    if "LRPO_COORDINATOR" in env:
        if env.get("JAX_PLATFORMS", "") == "cpu" or env.get("LRPO_CPU_COLLECTIVES"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["LRPO_COORDINATOR"],
                                   num_processes=int(env["LRPO_NUM_PROCESSES"]),
                                   process_id=int(env["LRPO_PROCESS_ID"]))
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        jax.distributed.initialize()  # cluster auto-detection reads SLURM_* variables
        return True
    if env.get("LRPO_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # the launcher knows it is one of several; jax finds the others
        return True
    if env.get("TPU_WORKER_HOSTNAMES") and "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()  # multi-host TPU VM slice
        return True
    return False


def log_mesh(mesh: Mesh) -> None:
    logging.info("mesh %s over %d devices (%d processes), platform %s", dict(mesh.shape),
                 mesh.devices.size, jax.process_count(), jax.devices()[0].platform)

