"""Shared helpers for benchmarks: timing that waits for the device, and the JSON line format."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax


def block(x):
    """Waits for every array in a pytree (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(x)


def timeit(fn: Callable[[], Any], *, warmup: int = 1, iters: int = 5, min_time: float = 0.0) -> float:
    """Median wall seconds per call of `fn()`, after `warmup` calls; results are blocked on."""
    for _ in range(warmup):
        block(fn())
    times = []
    start = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "python": platform.python_version(),
    }


def emit(name: str, ours: float, peer: float, unit: str, *, higher_is_better: bool = True, **extra) -> dict:
    """Prints one measurement as a JSON line. `ratio` > 1 means we are ahead of the peer."""
    if higher_is_better:
        ratio = ours / peer if peer else float("inf")
    else:
        ratio = peer / ours if ours else float("inf")
    rec = {"name": name, "ours": round(float(ours), 6), "peer": round(float(peer), 6), "unit": unit,
           "ratio": round(float(ratio), 4), **extra}
    print(json.dumps(rec, ensure_ascii=False), flush=True)
    return rec


def note(**fields) -> None:
    """Prints context (machine, settings, compile times) to stderr so stdout stays pure measurements."""
    print(json.dumps(fields, ensure_ascii=False, default=str), file=sys.stderr, flush=True)
