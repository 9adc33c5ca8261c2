"""Per-language-pair calibration of similarity rewards (lrpo_reference.md §2.2-§2.3).

Raw cross-lingual cosines are not comparable across language pairs (same-language pairs score
higher), so a raw-similarity reward would teach the router "answer in the question's language"
whatever the quality. A `CalibrationTable` holds, for every ORDERED (reference language, response
language) pair, statistics of equivalent-pair similarity measured offline:

* mean calibration:     cal = clip(s - lam * (mu_pair - mu_ref), -1, 1);  r = clip((cal + 1) / 2, 0, 1)
* quantile calibration: r = piecewise-linear empirical CDF of the pooled (equivalent, mismatched,
  hard-negative) similarities at s, optionally after s <- min(1, s / (ub + 1e-6)).

Lookups are vectorised and jittable. A pair missing from the table is an error at start-up
(`check_covers`) unless a fallback is configured, and at run time every use of the fallback is
reported through the returned `missing` mask: never silent.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import uuid
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("equivalent", "mismatched", "hard_negative")
FALLBACKS = ("error", "raw", "mu_ref")


@flax.struct.dataclass
class SearchIndex:
    """Where bisect_left lands at the start of each of `cells` equal cells spanning the table's grid
    values, per language pair. A sample then starts from its cell's entry and steps forward at most
    `steps` knots (the most any cell holds), instead of ~log2(Q) dependent bisect rounds: the same
    index, so the same result. Built on the host from the (fixed) quantile grid."""
    start: jax.Array       # [L*L*cells], in [0, Q]: uint8 for Q < 256 (a 4x smaller table stays in cache)
    lo: jax.Array          # f32: left edge of cell 0
    inv_width: jax.Array   # f32: 1 / cell width
    slope: jax.Array       # f32 [L*L*Q]: (q_i - q_{i-1}) / (x_i - x_{i-1}) of the segment ending at knot i (0 if empty)
    last: jax.Array        # f32 [L*L]: each pair's last knot (u = 1 from there)
    cells: int = flax.struct.field(pytree_node=False, default=1024)
    steps: int = flax.struct.field(pytree_node=False, default=0)


def segment_slopes(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(q_i - q_{i-1}) / (x_i - x_{i-1}) per knot i of each grid row (index 0 and empty segments: 0),
    computed in float32 with the same operations as the lookup's bisect path, so both agree bit for bit."""
    x, q = np.asarray(x, np.float32), np.asarray(levels, np.float32)
    width = x[..., 1:] - x[..., :-1]
    rise = np.broadcast_to(q[1:] - q[:-1], width.shape)
    slope = np.divide(rise, width, out=np.zeros_like(width), where=width > 0)
    return np.concatenate([np.zeros_like(slope[..., :1]), slope], axis=-1)


def search_index(quantiles: np.ndarray, levels: np.ndarray, cells: int = 1024) -> SearchIndex:
    x = np.asarray(quantiles, np.float32).reshape(-1, np.shape(quantiles)[-1])
    lo, hi = float(x.min()), float(x.max())
    width = max(hi - lo, 1e-6) / cells
    # Edges are widened by 1% of a cell on both sides, so a sample whose float32 cell index rounds
    # into a neighbour still starts at or before its bisect index and ends within `steps` of it.
    edges = lo + width * np.arange(cells, dtype=np.float64)
    pad = 0.01 * width
    start = np.stack([np.searchsorted(row, edges - pad, side="left") for row in x])
    # The lookup is bound by random reads of this table: the narrowest type that holds 0..Q
    # (uint8 measured 13-20% faster than int32 at 15 x 15 pairs x 1024 cells).
    start = start.astype(np.uint8 if x.shape[1] < 256 else np.uint16 if x.shape[1] < 65536 else np.int32)
    end = np.stack([np.searchsorted(row, np.append(edges[1:] + pad, np.inf), side="left") for row in x])
    return SearchIndex(start=jnp.asarray(start.reshape(-1)), lo=jnp.float32(lo), inv_width=jnp.float32(1.0 / width),
                       slope=jnp.asarray(segment_slopes(x, levels).reshape(-1)), last=jnp.asarray(x[:, -1]),
                       cells=cells, steps=int((end - start).max()))


@flax.struct.dataclass
class CalibrationTable:
    mean: jax.Array        # f32 [L, L] mean equivalent-pair similarity (reference lang, response lang)
    quantiles: jax.Array   # f32 [L, L, Q] similarity values at `levels` (non-decreasing)
    levels: jax.Array      # f32 [Q] quantile levels in [0, 1]
    ub: jax.Array          # f32 [L, L] upper-bound anchor
    counts: jax.Array      # f32 [L, L] equivalent pairs behind `mean`
    present: jax.Array     # bool [L, L]
    mu_ref: jax.Array      # f32 scalar: count-weighted mean of the equivalent means
    languages: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())
    provenance: str = flax.struct.field(pytree_node=False, default="{}")  # JSON
    search: SearchIndex | None = None  # quantile lookup accelerator (build/load add it; None = bisect)

    def indexed(self, cells: int = 1024) -> "CalibrationTable":
        return self.replace(search=search_index(np.asarray(self.quantiles), np.asarray(self.levels), cells))

    def index(self, code: str, where: str = "") -> int:
        try:
            return self.languages.index(code)
        except ValueError:
            raise KeyError(f"language {code!r} is not in the calibration table{' (' + where + ')' if where else ''}; "
                           f"table languages: {list(self.languages)}") from None

    def check_covers(self, languages: Sequence[str], fallback: str = "error") -> list[tuple[str, str]]:
        """Validates that every ordered pair of `languages` has statistics.

        Returns the missing pairs when a fallback is configured; raises (naming them) otherwise.
        """
        if fallback not in FALLBACKS:
            raise ValueError(f"reward.missing_pair={fallback!r}; expected one of {FALLBACKS}")
        present = np.asarray(self.present)
        missing = []
        for a in languages:
            for b in languages:
                if a not in self.languages or b not in self.languages or not present[self.index(a), self.index(b)]:
                    missing.append((a, b))
        if missing and fallback == "error":
            shown = ", ".join(f"{a}->{b}" for a, b in missing[:12])
            raise ValueError(f"calibration table lacks {len(missing)} language pair(s): {shown}"
                             f"{' ...' if len(missing) > 12 else ''}; rebuild it (python -m lrpo_jax.calibrate) or set "
                             f"reward.missing_pair to 'raw' or 'mu_ref'")
        return missing

    def lang_ids(self, codes: Sequence[str], where: str = "") -> np.ndarray:
        return np.array([self.index(c, where) for c in codes], np.int32)


def with_fallback(table: CalibrationTable, languages: Sequence[str], fallback: str):
    """The table a run with reward.missing_pair=`fallback` scores with, and its absent mask.

    Languages the table lacks are added as absent rows/columns (so they look up, not raise, mid-run).
    'raw': absent pairs stay absent: the raw score, clip(sim, 0, 1) for quantile and (sim + 1) / 2
    for mean. 'mu_ref': absent pairs are scored as an average pair: mean mu_ref (no shift, the same
    as 'raw' for mean calibration) and, for quantile, the average of the present pairs' grids and
    anchors. Either way, the absent mask [L, L] is what the reward counts as calibration fallbacks."""
    if fallback not in FALLBACKS or fallback == "error":
        raise ValueError(f"reward.missing_pair={fallback!r}: with_fallback takes 'raw' or 'mu_ref'")
    langs = tuple(table.languages) + tuple(dict.fromkeys(c for c in languages if c not in table.languages))
    n0, n = len(table.languages), len(langs)

    def grow(x, fill):
        x = np.asarray(x)
        out = np.full((n, n) + x.shape[2:], fill, x.dtype)
        out[:n0, :n0] = x
        return out

    mean, ub, counts = grow(table.mean, 0.0), grow(table.ub, 1.0), grow(table.counts, 0.0)
    quant, present = grow(table.quantiles, 0.0), grow(table.present, False)
    absent = ~present
    if fallback == "mu_ref" and absent.any() and present.any():
        quant[absent], ub[absent] = quant[present].mean(0), ub[present].mean()
        mean[absent] = float(table.mu_ref)
        present = np.ones_like(present)
    out = table.replace(mean=jnp.asarray(mean), quantiles=jnp.asarray(quant), ub=jnp.asarray(ub),
                        counts=jnp.asarray(counts), present=jnp.asarray(present), languages=langs)
    return out.indexed(table.search.cells if table.search is not None else 1024), absent


def mean_calibrate(table: CalibrationTable, sim, ref_lang, resp_lang, *, lam: float = 1.0, clip: bool = True):
    """Mean-shift calibration -> (reward in [0, 1], missing mask). Language args are table indices."""
    present = table.present[ref_lang, resp_lang]
    shift = lam * (table.mean[ref_lang, resp_lang] - table.mu_ref)
    shift = jnp.where(present, shift, 0.0)  # 'raw' and 'mu_ref' both mean "no shift" for a missing pair
    cal = sim - shift
    if clip:
        cal = jnp.clip(cal, -1.0, 1.0)
    return jnp.clip((cal + 1.0) / 2.0, 0.0, 1.0), ~present


def quantile_calibrate(table: CalibrationTable, sim, ref_lang, resp_lang, *, use_ub_norm: bool = True):
    """Quantile (empirical CDF) calibration -> (reward in [0, 1], missing mask).

    Matches the reference's per-sample bisect code: u = 0 at or below the first grid value, 1 from
    the last, linear inside the segment found by bisect_left (never a zero-width one inside the grid:
    bisect_left lands where x[i-1] < s <= x[i]). A missing pair falls back to clip(raw, 0, 1), as the
    reference did, and is flagged.
    """
    n_l, n_q = table.quantiles.shape[1:]
    pair = ref_lang * n_l + resp_lang  # one flat index: 1-D gathers are cheaper than [a, b] ones
    present = table.present.reshape(-1).at[pair].get(mode="promise_in_bounds")
    s = sim.astype(jnp.float32)
    if use_ub_norm:
        s = jnp.minimum(1.0, s / (table.ub.reshape(-1).at[pair].get(mode="promise_in_bounds") + 1e-6))
    flat = table.quantiles.reshape(-1)
    base = pair * n_q

    def at(idx):  # indices are in bounds by construction: skip XLA's clamping
        return flat.at[idx].get(mode="promise_in_bounds")

    if table.search is not None:
        # Start at the sample's cell's bisect index, then count the knots below s among the next
        # `steps` (sorted, so the count is how far bisect_left moves on). Counting keeps the gathers
        # independent: a chain of `lo = where(x[lo] < s, lo + 1, lo)` steps measured ~11% slower.
        idx = table.search
        cell = jnp.clip(jnp.floor((s - idx.lo) * idx.inv_width).astype(jnp.int32), 0, idx.cells - 1)
        start = idx.start.at[pair * idx.cells + cell].get(mode="promise_in_bounds").astype(jnp.int32)
        lo = start
        for k in range(idx.steps):
            j = start + k
            lo = lo + ((j < n_q) & (at(base + jnp.minimum(j, n_q - 1)) < s)).astype(lo.dtype)
    else:
        # Branch-free bisect_left on the flat [L*L*Q] table: ~log2(Q) gathers of one value per
        # sample, instead of gathering each sample's whole [Q] grid row (N x Q floats).
        lo, hi = jnp.zeros_like(base), jnp.full_like(base, n_q)
        for _ in range(max(1, int(n_q).bit_length())):
            mid = (lo + hi) // 2
            right = (at(base + jnp.minimum(mid, n_q - 1)) < s) & (lo < hi)
            lo, hi = jnp.where(right, mid + 1, lo), jnp.where(right | (lo >= hi), hi, mid)
    # lo = bisect_left: 0 means s <= the first knot (u = 0); otherwise x[lo-1] < s <= x[lo], a segment
    # of positive width (an empty one only at lo = Q, where s is past the last knot and u = 1).
    i_c = jnp.clip(lo, 1, n_q - 1)
    q0 = table.levels.at[i_c - 1].get(mode="promise_in_bounds")
    x0 = at(base + i_c - 1)
    if table.search is not None:  # the index carries each segment's slope and each pair's last knot
        slope = table.search.slope.at[base + i_c].get(mode="promise_in_bounds")
        last = table.search.last.at[pair].get(mode="promise_in_bounds")
    else:
        width = at(base + i_c) - x0
        rise = table.levels.at[i_c].get(mode="promise_in_bounds") - q0
        slope = jnp.where(width > 0, rise / jnp.where(width > 0, width, 1.0), 0.0)
        last = at(base + n_q - 1)
    u = jnp.where(lo == 0, 0.0, jnp.where(s >= last, 1.0, q0 + (s - x0) * slope))
    u = jnp.where(jnp.isnan(s), s, u)  # NaN in, NaN out (the lookups above would land on some segment)
    u = jnp.where(present, u, sim)
    return jnp.clip(u, 0.0, 1.0), ~present


def calibrate(table: CalibrationTable | None, sim, ref_lang, resp_lang, method: str):
    """Dispatch on reward.calibration: 'raw' | 'mean' | 'quantile'. 'raw' maps (s + 1) / 2."""
    if method == "raw" or table is None:
        if method != "raw":
            raise ValueError(f"reward.calibration={method!r} needs a calibration table")
        return jnp.clip((sim + 1.0) / 2.0, 0.0, 1.0), jnp.zeros(sim.shape, bool)
    if method == "mean":
        return mean_calibrate(table, sim, ref_lang, resp_lang)
    if method == "quantile":
        return quantile_calibrate(table, sim, ref_lang, resp_lang)
    raise ValueError(f"reward.calibration={method!r}; expected 'raw', 'mean' or 'quantile'")


# ------------------------------------------------------------------------------------------------
# Building, saving, loading.
# ------------------------------------------------------------------------------------------------
def build(languages: Sequence[str], ref_lang: np.ndarray, resp_lang: np.ndarray, kind: np.ndarray,
          sim: np.ndarray, *, num_levels: int = 101, ub_quantile: float = 0.99,
          provenance: dict | None = None) -> CalibrationTable:
    """Builds a table from labelled similarity samples.

    ref_lang, resp_lang: int [N] indices into `languages`; kind: int [N] index into KINDS.
    mean/counts from equivalent pairs; the quantile grid from all kinds pooled (the reference's
    "mix" distribution); ub = the `ub_quantile` quantile of equivalent sims (so a typical good
    answer maps close to 1 after ub normalisation).
    """
    n_l = len(languages)
    levels = np.linspace(0.0, 1.0, num_levels, dtype=np.float64)
    mean = np.zeros((n_l, n_l), np.float32)
    counts = np.zeros((n_l, n_l), np.float32)
    quant = np.zeros((n_l, n_l, num_levels), np.float32)
    ub = np.ones((n_l, n_l), np.float32)
    present = np.zeros((n_l, n_l), bool)
    for a in range(n_l):
        for b in range(n_l):
            pair = (ref_lang == a) & (resp_lang == b)
            eq = sim[pair & (kind == 0)]
            if len(eq) == 0:
                continue
            present[a, b] = True
            counts[a, b] = len(eq)
            mean[a, b] = eq.mean()
            ub[a, b] = np.quantile(eq, ub_quantile)
            pooled = sim[pair]
            normed = np.minimum(1.0, pooled / (ub[a, b] + 1e-6))
            quant[a, b] = np.quantile(normed, levels)
    mu_ref = float((mean * counts).sum() / max(counts.sum(), 1.0))
    prov = {"built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "num_levels": num_levels, "ub_quantile": ub_quantile, "samples": int(len(sim)),
            **(provenance or {})}
    return CalibrationTable(mean=jnp.asarray(mean), quantiles=jnp.asarray(quant),
                            levels=jnp.asarray(levels.astype(np.float32)), ub=jnp.asarray(ub),
                            counts=jnp.asarray(counts), present=jnp.asarray(present),
                            mu_ref=jnp.float32(mu_ref), languages=tuple(languages),
                            provenance=json.dumps(prov)).indexed()


TABLE_FILE = "table"  # `python -m lrpo_jax.calibrate --workdir W` writes W/table.npz + W/table.json


def _files(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(<name>.json, <name>.npz) of a table given as <name>, <name>.npz or <name>.json. Only those two
    suffixes are stripped: with_suffix would cut "e5.v2" to "e5"."""
    path = pathlib.Path(path)
    if path.suffix in (".npz", ".json"):
        path = path.with_name(path.name[: -len(path.suffix)])
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".npz")


def save(table: CalibrationTable, path: str | pathlib.Path) -> pathlib.Path:
    """Writes `<path>.json` (languages, provenance), then `<path>.npz` (arrays), each atomically and
    under a temporary name of its own: the .npz appearing means the table is complete, and several
    processes building the same cached table at once cannot trip over each other's files."""
    meta_path, npz_path = _files(path)
    path = npz_path.with_name(npz_path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(getattr(table, k)) for k in ("mean", "quantiles", "levels", "ub", "counts", "present",
                                                       "mu_ref")}
    tag = f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    meta = path.with_name(path.name + tag + ".json")
    meta.write_text(json.dumps({"languages": list(table.languages), "provenance": json.loads(table.provenance)},
                               indent=2))
    meta.replace(meta_path)
    tmp = path.with_name(path.name + tag + ".npz")
    np.savez(tmp, **arrays)
    tmp.replace(npz_path)
    return npz_path


def load(path: str | pathlib.Path) -> CalibrationTable:
    """Reads a saved table (<name>, <name>.npz or <name>.json, or a calibrate workdir holding one)
    and validates shapes, languages, finiteness and monotone quantiles."""
    given = path
    if pathlib.Path(path).is_dir():
        if not (pathlib.Path(path) / f"{TABLE_FILE}.npz").exists():
            raise FileNotFoundError(f"calibration table {given} is a folder without {TABLE_FILE}.npz (what "
                                    f"`python -m lrpo_jax.calibrate --workdir` writes); give the table's <name>.npz")
        path = pathlib.Path(path) / TABLE_FILE
    meta_path, npz_path = _files(path)
    path = npz_path
    missing = [str(p) for p in (npz_path, meta_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"calibration table {given}: {' and '.join(missing)} not found (a table is a "
                                f"<name>.npz + <name>.json pair, as `python -m lrpo_jax.calibrate` writes)")
    meta = json.loads(meta_path.read_text())
    langs = tuple(meta["languages"])
    with np.load(npz_path) as f:
        arrays = {k: f[k] for k in f.files}
    n_l = len(langs)
    absent = [k for k in ("mean", "ub", "counts", "present", "quantiles", "levels", "mu_ref") if k not in arrays]
    if absent:
        raise ValueError(f"invalid calibration table {path}: arrays {absent} missing")
    problems = []
    for key, shape in (("mean", (n_l, n_l)), ("ub", (n_l, n_l)), ("counts", (n_l, n_l)), ("present", (n_l, n_l))):
        if arrays[key].shape != shape:
            problems.append(f"{key} has shape {arrays[key].shape}, expected {shape}")
    q = arrays["quantiles"]
    if q.shape[:2] != (n_l, n_l) or q.shape[2] != arrays["levels"].shape[0]:
        problems.append(f"quantiles has shape {q.shape}, expected ({n_l}, {n_l}, {arrays['levels'].shape[0]})")
    if not problems:
        for a, b in zip(*np.nonzero(arrays["present"])):
            pair = f"{langs[a]}->{langs[b]}"
            if not np.isfinite(q[a, b]).all() or not np.isfinite(arrays["mean"][a, b]):
                problems.append(f"pair {pair}: non-finite values")
            elif np.any(np.diff(q[a, b]) < 0):
                problems.append(f"pair {pair}: quantile grid is not non-decreasing")
            if not (np.isfinite(arrays["ub"][a, b]) and arrays["ub"][a, b] > 0):  # quantile lookups divide by it
                problems.append(f"pair {pair}: upper-bound anchor ub={arrays['ub'][a, b]} is not a positive number")
        lv = arrays["levels"]
        if not (np.isfinite(lv).all() and lv.min(initial=0.0) >= 0 and lv.max(initial=0.0) <= 1):
            problems.append(f"levels must lie in [0, 1], got {lv.min(initial=0.0)} .. {lv.max(initial=0.0)}")
        elif np.any(np.diff(lv) < 0):
            problems.append("levels are not non-decreasing")
        if not np.isfinite(arrays["mu_ref"]):
            problems.append(f"mu_ref={arrays['mu_ref']} is not finite")
    if problems:
        raise ValueError(f"invalid calibration table {path}: " + "; ".join(problems[:10]))
    return CalibrationTable(mean=jnp.asarray(arrays["mean"]), quantiles=jnp.asarray(q),
                            levels=jnp.asarray(arrays["levels"]), ub=jnp.asarray(arrays["ub"]),
                            counts=jnp.asarray(arrays["counts"]), present=jnp.asarray(arrays["present"]),
                            mu_ref=jnp.float32(arrays["mu_ref"]), languages=langs,
                            provenance=json.dumps(meta.get("provenance", {}))).indexed()


def online_update(table: CalibrationTable, sim, ref_lang, resp_lang, weight, rate: float) -> CalibrationTable:
    """"Offline estimation + online calibration": moves each pair's mean towards the mean of this
    batch's (weighted, e.g. gate-passing) on-policy similarities with rate `rate`; pairs without
    samples in the batch are unchanged. mu_ref is kept fixed, so calibration stays anchored."""
    n_l = table.mean.shape[0]
    flat = ref_lang * n_l + resp_lang
    w = weight.astype(jnp.float32)
    tot = jnp.zeros(n_l * n_l).at[flat].add(w).reshape(n_l, n_l)
    acc = jnp.zeros(n_l * n_l).at[flat].add(w * sim).reshape(n_l, n_l)
    batch_mean = acc / jnp.maximum(tot, 1e-12)
    seen = (tot > 0) & table.present
    return table.replace(mean=jnp.where(seen, (1 - rate) * table.mean + rate * batch_mean, table.mean))
