"""Calibration lookups vs the reference's per-sample Python code; builder, save/load validation."""
import bisect
import pathlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax.rewards import calibration as cal

LANGS = ("de", "en", "ja")


def reference_mean(sim, mu_pair, mu_ref):
    """calibrated_rs.py semantics (lam = 1, clip on)."""
    c = min(1.0, max(-1.0, sim - (mu_pair - mu_ref)))
    return min(1.0, max(0.0, (c + 1) / 2))


def reference_quantile(s, xs, qs, ub, use_ub_norm):
    """calibrated_bert_hard_fuse_quan.py semantics (bisect_left over the grid)."""
    if use_ub_norm:
        s = min(1.0, s / (ub + 1e-6))
    if s <= xs[0]:
        u = 0.0
    elif s >= xs[-1]:
        u = 1.0
    else:
        i = bisect.bisect_left(xs, s)
        x0, x1, q0, q1 = xs[i - 1], xs[i], qs[i - 1], qs[i]
        u = q1 if x1 == x0 else q0 + (s - x0) / (x1 - x0) * (q1 - q0)
    return min(1.0, max(0.0, u))


def _table(seed=0, ties=True, levels=21):
    rng = np.random.default_rng(seed)
    n = len(LANGS)
    ref, resp, kind, sim = [], [], [], []
    for a in range(n):
        for b in range(n):
            for k, (mu, sd, cnt) in enumerate(((0.9 - 0.03 * abs(a - b), 0.03, 30), (0.7, 0.05, 30), (0.8, 0.03, 20))):
                s = rng.normal(mu, sd, cnt)
                if ties:
                    s = np.round(s, 2)  # duplicate grid values -> zero-width segments
                ref += [a] * cnt
                resp += [b] * cnt
                kind += [k] * cnt
                sim += list(s)
    return cal.build(LANGS, np.array(ref), np.array(resp), np.array(kind), np.array(sim, np.float32), num_levels=levels)


def _quantile7(xs, q):
    """The (n-1)p linear-interpolation sample quantile, in plain Python (Hyndman-Fan type 7)."""
    xs = sorted(xs)
    h = (len(xs) - 1) * q
    lo = int(h)
    return xs[lo] if lo + 1 >= len(xs) else xs[lo] + (h - lo) * (xs[lo + 1] - xs[lo])


def test_builder_follows_the_reference_recipe():
    """Per ordered pair: mean and count of the equivalent pairs; ub = their 0.99 quantile; the grid =
    quantiles at linspace(0, 1, Q) of min(1, s / (ub + 1e-6)) over all three kinds pooled; mu_ref the
    count-weighted mean of the pair means. Restated here in plain Python, not numpy."""
    rng = np.random.default_rng(5)
    ref, resp, kind, sim = [], [], [], []
    for a, b, n_eq in ((0, 1, 7), (1, 0, 12), (2, 2, 5)):
        for k, (mu, cnt) in enumerate(((0.85, n_eq), (0.6, 9), (0.75, 4))):
            ref += [a] * cnt
            resp += [b] * cnt
            kind += [k] * cnt
            sim += list(rng.normal(mu, 0.05, cnt))
    ref, resp, kind, sim = map(np.asarray, (ref, resp, kind, np.float32(sim)))
    t = cal.build(LANGS, ref, resp, kind, sim, num_levels=11)
    assert np.asarray(t.present).tolist() == [[False, True, False], [True, False, False], [False, False, True]]
    total, weighted = 0, 0.0
    for a, b in ((0, 1), (1, 0), (2, 2)):
        pair = (ref == a) & (resp == b)
        eq = [float(x) for x in sim[pair & (kind == 0)]]
        assert float(t.counts[a, b]) == len(eq)
        assert float(t.mean[a, b]) == pytest.approx(sum(eq) / len(eq), abs=1e-6)
        ub = _quantile7(eq, 0.99)
        assert float(t.ub[a, b]) == pytest.approx(ub, abs=1e-6)
        normed = [min(1.0, float(x) / (float(t.ub[a, b]) + 1e-6)) for x in sim[pair]]
        np.testing.assert_allclose(t.quantiles[a, b], [_quantile7(normed, i / 10) for i in range(11)], atol=1e-6)
        total, weighted = total + len(eq), weighted + sum(eq)
    assert float(t.mu_ref) == pytest.approx(weighted / total, abs=1e-6)


def test_mean_calibration_matches_reference_loop():
    table = _table()
    rng = np.random.default_rng(1)
    sims = rng.uniform(-1, 1.2, 500).astype(np.float32)
    a, b = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    ours, missing = jax.jit(cal.mean_calibrate)(table, jnp.asarray(sims), jnp.asarray(a), jnp.asarray(b))
    mean, mu_ref = np.asarray(table.mean), float(table.mu_ref)
    want = [reference_mean(float(s), float(mean[i, j]), mu_ref) for s, i, j in zip(sims, a, b)]
    np.testing.assert_allclose(ours, want, atol=1e-6)
    assert not np.asarray(missing).any()
    counts = np.asarray(table.counts)
    assert mu_ref == pytest.approx((mean * counts).sum() / counts.sum(), rel=1e-6)


@pytest.mark.parametrize("cells", [None, 3, 1024])  # None: bisect; 3 cells: many knots per cell
@pytest.mark.parametrize("use_ub", [True, False])
def test_quantile_calibration_matches_reference_bisect(use_ub, cells):
    table = _table()
    table = table.replace(search=None) if cells is None else table.indexed(cells)
    rng = np.random.default_rng(2)
    grid = np.asarray(table.quantiles)
    # Values on, between and outside grid points (exact ties exercise bisect_left).
    sims = np.concatenate([rng.uniform(0.5, 1.05, 400), grid[0, 1, ::3] * (np.asarray(table.ub)[0, 1] + 1e-6)])
    sims = sims.astype(np.float32)
    a = np.concatenate([rng.integers(0, 3, 400), np.zeros(len(sims) - 400, int)])
    b = np.concatenate([rng.integers(0, 3, 400), np.ones(len(sims) - 400, int)])
    ours, _ = jax.jit(cal.quantile_calibrate, static_argnames="use_ub_norm")(
        table, jnp.asarray(sims), jnp.asarray(a), jnp.asarray(b), use_ub_norm=use_ub)
    qs, ub = list(np.asarray(table.levels)), np.asarray(table.ub)
    want = [reference_quantile(float(np.float32(s)), list(grid[i, j]), qs, float(ub[i, j]), use_ub)
            for s, i, j in zip(sims, a, b)]
    np.testing.assert_allclose(ours, want, atol=2e-6)
    assert np.any(np.diff(grid, axis=-1) == 0)  # the table really has zero-width segments
    bisect, _ = jax.jit(cal.quantile_calibrate, static_argnames="use_ub_norm")(
        table.replace(search=None), jnp.asarray(sims), jnp.asarray(a), jnp.asarray(b), use_ub_norm=use_ub)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(bisect))  # the index finds the same segment


@pytest.mark.parametrize("levels, dtype", [(21, np.uint8), (255, np.uint8), (256, np.uint16)])
def test_search_index_start_type_holds_every_grid_index(levels, dtype):
    """The index stores bisect starts in the narrowest type holding 0..Q (Q itself included)."""
    table = _table(levels=levels)
    assert np.asarray(table.search.start).dtype == dtype
    sims = jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.1, 2000).astype(np.float32))
    a, b = jnp.asarray(np.arange(2000) % 3), jnp.asarray(np.arange(2000) // 3 % 3)
    ours, _ = cal.quantile_calibrate(table, sims, a, b)
    bisect, _ = cal.quantile_calibrate(table.replace(search=None), sims, a, b)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(bisect))


@pytest.mark.parametrize("cells", [None, 1024])
def test_quantile_calibration_keeps_nan(cells):
    """NaN in, NaN out (the caller counts it), never a score from whatever segment NaN lands on."""
    table = _table()
    table = table.replace(search=None) if cells is None else table.indexed(cells)
    sims = jnp.asarray([np.nan, 0.8, np.nan], jnp.float32)
    out, _ = cal.quantile_calibrate(table, sims, jnp.asarray([0, 0, 1]), jnp.asarray([1, 1, 2]))
    out = np.asarray(out)
    assert np.isnan(out[0]) and np.isnan(out[2]) and 0.0 <= out[1] <= 1.0


def test_search_index_steps_cover_every_cell():
    table = _table().indexed(64)
    grid = np.asarray(table.quantiles).reshape(-1, np.asarray(table.quantiles).shape[-1])
    idx = table.search
    assert 0 < idx.steps <= grid.shape[1]
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.uniform(grid.min() - 0.1, grid.max() + 0.1, 5000), grid.ravel()]).astype(np.float32)
    for p in range(grid.shape[0]):
        cell = np.clip(np.floor((s - np.float32(idx.lo)) * np.float32(idx.inv_width)).astype(np.int64), 0, 63)
        start = np.asarray(idx.start).reshape(grid.shape[0], 64)[p, cell]
        truth = np.searchsorted(grid[p], s, side="left")
        assert np.all(start <= truth) and np.all(truth - start <= idx.steps)


def test_missing_pairs_error_or_flagged_fallback():
    table = _table()
    table = table.replace(present=table.present.at[1, 1].set(False))  # en->en missing, as in the reference CSV
    with pytest.raises(ValueError, match=r"lacks 1 language pair\(s\): en->en"):
        table.check_covers(LANGS)
    assert table.check_covers(LANGS, fallback="raw") == [("en", "en")]
    with pytest.raises(ValueError, match="lacks 3 language pair"):
        table.check_covers(("de", "ko"))
    r, missing = cal.mean_calibrate(table, jnp.array([0.5, 0.5]), jnp.array([1, 0]), jnp.array([1, 0]))
    assert np.asarray(missing).tolist() == [True, False]
    assert float(r[0]) == pytest.approx(0.75)  # no shift for the missing pair, flagged
    with pytest.raises(KeyError, match="language 'ko' is not in the calibration table"):
        table.lang_ids(["de", "ko"])


def test_save_load_round_trip_and_validation(tmp_path):
    table = _table()
    cal.save(table, tmp_path / "t")
    back = cal.load(tmp_path / "t.npz")
    assert back.languages == LANGS and '"num_levels": 21' in back.provenance
    for k in ("mean", "quantiles", "levels", "ub", "counts", "present"):
        np.testing.assert_array_equal(getattr(back, k), getattr(table, k))
    arrays = dict(np.load(tmp_path / "t.npz"))
    arrays["quantiles"][2, 0, 5] = -5.0
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(ValueError, match="pair ja->de: quantile grid is not non-decreasing"):
        cal.load(tmp_path / "t")
    # Values a lookup would turn into NaN rewards are refused too, each named.
    good = dict(np.load(tmp_path / "t.npz"))
    good["quantiles"][2, 0, 5] = good["quantiles"][2, 0, 4]
    for key, edit, msg in (("ub", lambda a: a.__setitem__((0, 1), np.nan), r"pair de->en: upper-bound anchor ub=nan"),
                           ("ub", lambda a: a.__setitem__((1, 0), 0.0), r"pair en->de: upper-bound anchor ub=0.0"),
                           ("levels", lambda a: a.__imul__(5), r"levels must lie in \[0, 1\], got 0.0 .. 5.0"),
                           ("mu_ref", None, r"mu_ref=nan is not finite")):
        arrays = {k: v.copy() for k, v in good.items()}
        if edit is None:
            arrays[key] = np.float32(np.nan)
        else:
            edit(arrays[key])
        np.savez(tmp_path / "t.npz", **arrays)
        with pytest.raises(ValueError, match=msg):
            cal.load(tmp_path / "t")
    np.savez(tmp_path / "t.npz", **{k: v for k, v in good.items() if k != "levels"})
    with pytest.raises(ValueError, match=r"arrays \['levels'\] missing"):
        cal.load(tmp_path / "t")


def test_table_paths_keep_dots_and_missing_tables_name_the_given_path(tmp_path):
    table = _table()
    assert cal.save(table, tmp_path / "e5.v2.npz") == tmp_path / "e5.v2.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e5.v2.json", "e5.v2.npz"]
    for given in ("e5.v2.npz", "e5.v2.json", "e5.v2"):
        assert cal.load(tmp_path / given).languages == LANGS
    with pytest.raises(FileNotFoundError, match=rf"calibration table {tmp_path / 'nope.npz'}: .* not found \(a "
                                                r"table is a <name>.npz \+ <name>.json pair"):
        cal.load(tmp_path / "nope.npz")
    (tmp_path / "e5.v2.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"e5.v2.npz: {tmp_path / 'e5.v2.json'} not found"):
        cal.load(tmp_path / "e5.v2.npz")
    # A calibrate workdir: the table it writes there loads; another folder says it is one.
    cal.save(table, tmp_path / "w" / cal.TABLE_FILE)
    assert cal.load(tmp_path / "w").languages == LANGS
    with pytest.raises(FileNotFoundError, match=rf"calibration table {tmp_path} is a folder without table.npz"):
        cal.load(tmp_path)


def test_concurrent_saves_of_one_table_do_not_collide(tmp_path):
    """Every process of a multi-process run builds the cached 'auto' table and saves it to the same
    path: each writes under its own temporary name, metadata first, so the .npz marks a whole table."""
    import concurrent.futures
    table = _table()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: cal.save(table, tmp_path / "t"), range(8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.npz"]
    np.testing.assert_array_equal(cal.load(tmp_path / "t").quantiles, table.quantiles)
    saved = []
    real = pathlib.Path.replace
    with mock.patch.object(pathlib.Path, "replace", lambda self, dst: saved.append(pathlib.Path(dst).suffix) or real(self, dst)):
        cal.save(table, tmp_path / "u")
    assert saved == [".json", ".npz"]


def test_online_update_moves_only_observed_pairs():
    table = _table()
    new = cal.online_update(table, jnp.array([1.0, 1.0]), jnp.array([0, 0]), jnp.array([2, 2]), jnp.ones(2), 0.5)
    diff = np.array(new.mean - table.mean)
    assert diff[0, 2] == pytest.approx(0.5 * (1.0 - float(table.mean[0, 2])))
    diff[0, 2] = 0
    assert not diff.any() and float(new.mu_ref) == float(table.mu_ref)


def test_calibration_removes_a_same_language_bias():
    """The reason calibration exists: same-language equivalent pairs score higher raw."""
    table = _table(ties=False)
    mean = np.asarray(table.mean)
    raw_spread = mean.max() - mean.min()
    a, b = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    calibrated, _ = cal.mean_calibrate(table, jnp.asarray(mean.ravel()), jnp.asarray(a.ravel()), jnp.asarray(b.ravel()))
    assert raw_spread > 0.04 and np.ptp(np.asarray(calibrated)) < 1e-6
