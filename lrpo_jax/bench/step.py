"""Where a training step's time goes: per-phase wall time of real trainer steps.

    python -m lrpo_jax.bench step [--config configs/demo.py:steps=5] [--workdir DIR]

Runs the trainer (default: the demo config, Gemma-3-270M, 5 steps) and reads its per-step phase
timings (route, prompts, sample, reward, update) from metrics.jsonl, skipping step 1 (compilation).
Lines (stdout, JSON):
  step/host_fraction    share of step time outside the sampler's and the update's jitted device
                        work: (step - sample - update) / step, an upper bound (it counts the reward
                        encoder's device time as host time). peer = the target 0.15, lower is better,
                        so ratio = 0.15 / ours (> 1 = within target).
  step/no_recompile    share of steps after step 2 that compiled nothing new, among the steps whose
                        shapes were all seen before (a step that is the first to use a prompt or
                        encoder length bucket compiles once per bucket, by design; those steps are
                        listed in `new_bucket_steps`). Target 1.0 = peer; `new_compiles` counts all.
Per-phase medians (seconds) go to stderr.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile

from lrpo_jax.bench import common

PHASES = ("route", "prompts", "sample", "reward", "update")


def summarize(rows: list[dict]) -> dict:
    """Medians of each phase over steps >= 2, host fraction, compilations after step 2."""
    steady = [r for r in rows if r["step"] >= 2] or rows
    med = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in steady) for p in PHASES}
    med["step"] = statistics.median(r["time/step"] for r in steady)
    host = (med["step"] - med["sample"] - med["update"]) / med["step"]
    by_step = {r["step"]: r["compiles"] for r in rows}
    new_bucket = {r["step"] for r in rows if r.get("shape/new_bucket")}
    # Steps after 2 that use only shapes seen before must compile nothing: those are the steps judged.
    later = [s for s in sorted(by_step) if s > 2 and s not in new_bucket]
    clean = sum(by_step[s] == by_step[s - 1] for s in later if s - 1 in by_step)
    return {"median_seconds": {k: round(v, 3) for k, v in med.items()}, "host_fraction": host,
            "new_compiles": by_step[max(by_step)] - by_step.get(2, by_step[max(by_step)]),
            "no_recompile": clean / len(later) if later else 1.0,
            "steps_judged": len(later), "new_bucket_steps": sorted(s for s in new_bucket if s > 2)}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench step", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")
                   + ":steps=5")
    p.add_argument("--workdir", help="default: a temporary folder")
    args = p.parse_args(argv)

    from lrpo_jax import config_lib, trainer
    path, _, arg = args.config.partition(":")
    path = pathlib.Path(path).resolve()
    cfg = config_lib.load_sibling(str(path), path.stem).get_config(arg or None)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir or tmp)
        trainer.train(cfg, str(workdir))
        rows = [json.loads(x) for x in (workdir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    s = summarize(rows)
    common.note(**common.machine(), config=args.config, steps=len(rows), **s["median_seconds"])
    common.emit("step/host_fraction", s["host_fraction"], 0.15, "fraction", higher_is_better=False)
    common.emit("step/no_recompile", s["no_recompile"], 1.0, "fraction of steps", new_compiles=s["new_compiles"],
                steps_judged=s["steps_judged"], new_bucket_steps=s["new_bucket_steps"])
