"""LRPO training entry point.

    python -m lrpo_jax.train --config configs/demo.py --workdir runs/demo
    python -m lrpo_jax.train --config configs/smoke.py:steps=3 --workdir /tmp/smoke --config.rl.kl_coef=0.01

Re-running the same command resumes from the latest checkpoint in --workdir. A run stopped by
SIGTERM/SIGINT saves a checkpoint and exits with 128 + the signal number (143 / 130), as a process
killed by that signal would, so schedulers and sweeps do not read it as finished.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the router JSONL go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lrpo_jax import trainer  # after flag parsing: keeps `--help` fast
    # Orbax and XLA log every save at INFO; our progress goes through the progress bar and prints.
    logging.set_verbosity(logging.WARNING)
    out = trainer.train(_CONFIG.value, _WORKDIR.value)
    if out["stopped_by"]:
        sys.exit(128 + int(out["stopped_by"]))


if __name__ == "__main__":
    app.run(main)
