"""Calibration lookups: our jitted table lookups vs the reference's per-sample Python code.

    python -m lrpo_jax.bench calibration [--samples 65536] [--levels 101] [--iters 5]

Lines (stdout, JSON):
  calibration/quantile_65536  samples/s: quantile lookup (upper-bound normalisation, linear
                              interpolation on a 101-level grid) over 15 x 15 language pairs, vs a
                              plain-Python bisect loop per sample as in the reference's
                              calibrated_bert_hard_fuse_quan.py
  calibration/mean_65536      samples/s: mean-shift calibration vs the reference's per-sample loop
Both sides read the same table (built from synthetic similarity samples with a per-pair offset) and
the same inputs; the max abs difference between the two outputs is printed on stderr (a few 1e-6 at
most: same formula, fp32 vs Python floats).
"""
from __future__ import annotations

import argparse
import bisect

import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax import vocab
from lrpo_jax.bench import common
from lrpo_jax.rewards import calibration as calib_lib


def reference_quantile(s: float, xs, qs, ub: float) -> float:
    """Per-sample lookup with the reference's semantics: s / ub, bisect_left, linear interpolation."""
    s = min(1.0, s / (ub + 1e-6))
    if s <= xs[0]:
        return 0.0
    if s >= xs[-1]:
        return 1.0
    i = bisect.bisect_left(xs, s)
    x0, x1, q0, q1 = xs[i - 1], xs[i], qs[i - 1], qs[i]
    u = q1 if x1 == x0 else q0 + (s - x0) / (x1 - x0) * (q1 - q0)
    return min(1.0, max(0.0, u))


def reference_mean(s: float, mu_pair: float, mu_ref: float) -> float:
    c = min(1.0, max(-1.0, s - (mu_pair - mu_ref)))
    return min(1.0, max(0.0, (c + 1) / 2))


def synthetic_table(languages, levels: int, seed: int = 0) -> calib_lib.CalibrationTable:
    """Equivalent / mismatched / hard-negative samples per ordered pair, with per-pair offsets."""
    rng = np.random.default_rng(seed)
    ref, resp, kind, sim = [], [], [], []
    n = len(languages)
    for a in range(n):
        for b in range(n):
            shift = 0.04 * rng.standard_normal() + (0.03 if a == b else 0.0)
            for k, (mu, sd, cnt) in enumerate(((0.86, 0.04, 64), (0.70, 0.05, 64), (0.78, 0.04, 32))):
                ref += [a] * cnt
                resp += [b] * cnt
                kind += [k] * cnt
                sim += list(rng.normal(mu + shift, sd, cnt))
    return calib_lib.build(tuple(languages), np.array(ref), np.array(resp), np.array(kind),
                           np.array(sim, np.float32), num_levels=levels)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench calibration", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=65536)
    p.add_argument("--levels", type=int, default=101)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)

    langs = vocab.DEFAULT_LANGUAGES
    table = synthetic_table(langs, args.levels)
    rng = np.random.default_rng(1)
    n = args.samples
    sims = rng.uniform(0.4, 1.0, n).astype(np.float32)
    a = rng.integers(0, len(langs), n).astype(np.int32)
    b = rng.integers(0, len(langs), n).astype(np.int32)
    common.note(**common.machine(), languages=len(langs), levels=args.levels, samples=n)

    grid, levels = np.asarray(table.quantiles).tolist(), np.asarray(table.levels).tolist()
    ub, mean, mu_ref = np.asarray(table.ub).tolist(), np.asarray(table.mean).tolist(), float(table.mu_ref)
    sims_l, a_l, b_l = sims.tolist(), a.tolist(), b.tolist()

    def peer_quantile():
        return [reference_quantile(s, grid[i][j], levels, ub[i][j]) for s, i, j in zip(sims_l, a_l, b_l)]

    def peer_mean():
        return [reference_mean(s, mean[i][j], mu_ref) for s, i, j in zip(sims_l, a_l, b_l)]

    x, ai, bi = jnp.asarray(sims), jnp.asarray(a), jnp.asarray(b)
    for method, peer_fn, fn in (
            ("quantile", peer_quantile, jax.jit(lambda t, s, i, j: calib_lib.quantile_calibrate(t, s, i, j)[0])),
            ("mean", peer_mean, jax.jit(lambda t, s, i, j: calib_lib.mean_calibrate(t, s, i, j)[0]))):
        # Ours takes < 1 ms a call: a median over >= 1 s of calls, not 5, so one slow call is not the figure.
        ours = common.timeit(lambda: fn(table, x, ai, bi), warmup=2, iters=args.iters, min_time=1.0)
        peer = common.timeit(peer_fn, warmup=0, iters=max(1, args.iters // 2))
        diff = float(np.max(np.abs(np.asarray(fn(table, x, ai, bi)) - np.asarray(peer_fn(), np.float32))))
        common.note(bench=f"calibration/{method}_{n}", max_abs_diff_vs_reference=diff)
        common.emit(f"calibration/{method}_{n}", n / ours, n / peer, "samples/s", samples=n,
                    max_abs_diff=round(diff, 8))
