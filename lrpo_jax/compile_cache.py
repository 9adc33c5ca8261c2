"""JAX's persistent compilation cache, on by default for the CLIs.

On a 2-core CPU the smoke run spends ~half its time in XLA compiles and a Gemma demo step compiles
for tens of seconds; a second run (or a resumed one) loads the same executables from disk instead.
Keys include the jax/jaxlib version, the HLO and the devices, so a stale entry is never reused for a
different program. `JAX_COMPILATION_CACHE_DIR`, when set, wins (tests and CI share one folder).
"""
from __future__ import annotations

import logging
import os
import pathlib

import jax

MIN_COMPILE_SECONDS = 0.2  # smaller programs compile faster than a disk round trip pays back


def enable(setting: str) -> str | None:
    """`setting`: "auto" ($LRPO_CACHE/xla), a folder, or "" (off). Returns the folder in use."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]  # jax reads its own env vars at import
    if not setting:
        return None
    if setting == "auto":
        from lrpo_jax.models import shipped
        folder = str(shipped.cache_root() / "xla")
    else:
        folder = str(pathlib.Path(setting).expanduser())
    pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    logging.info("XLA compilation cache: %s", folder)
    return folder
