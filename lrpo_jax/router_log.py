"""Router logging: the reference's JSONL records and probability matrices for heatmaps.

JSONL (lrpo_reference.md §1.8), one line per logged step:

    {"step": s, "probs": {"topic:<name>":  {"softmax": {code: p}, "effective": {code: p}},
                          "region:<name>": {"softmax": ..., "effective": ...}}}

softmax = softmax(row / tau) of that single row, effective = (1 - eps) softmax + eps / L. Region
rows are B alone, as the reference logs them; what a regional prompt from region g actually sees
(A[t] + B[g]) is in `heatmaps` under "router/routing/<topic>".

Timing: the trainer writes a record after the step's jitted update, so at an update step it shows
the router after its EMA, i.e. what the next step routes with, with the next step's tau/eps (the
reference logs before the update). "step" is the training step, which is the reference's
lang_policy_step whenever the router learns (one observe per step); with the router off it still
counts, so resume truncation works for every run.
"""
from __future__ import annotations

import json
import os

import numpy as np

from lrpo_jax.router import RouterSpec, RouterState


def _softmax_rows(rows: np.ndarray, tau: float) -> np.ndarray:
    z = np.asarray(rows, np.float64) / max(float(tau), 1e-6)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def probability_tables(state: RouterState, tau, eps) -> dict[str, np.ndarray]:
    """Row-wise softmax and effective probabilities: topic_* [T, L] from A, region_* [G, L] from B."""
    out = {}
    for name, rows in (("topic", state.A), ("region", state.B)):
        p = _softmax_rows(np.asarray(rows), tau)
        out[f"{name}_softmax"] = p
        out[f"{name}_effective"] = (1.0 - float(eps)) * p + float(eps) / p.shape[-1]
    return out


def routing_tables(spec: RouterSpec, state: RouterState, tau, eps) -> dict[str, np.ndarray]:
    """Per regional topic t, the effective routing distribution [G, L] of a prompt of topic t from
    one region g: (1 - eps) softmax((A[t] + B[g]) / tau) + eps / L."""
    A, B = np.asarray(state.A), np.asarray(state.B)
    out = {}
    for t in spec.regional_topics:
        p = _softmax_rows(A[spec.topics.index(t)][None, :] + B, tau)
        out[t] = (1.0 - float(eps)) * p + float(eps) / p.shape[-1]
    return out


def heatmaps(spec: RouterSpec, state: RouterState, tau, eps) -> dict[str, tuple[np.ndarray, tuple, tuple]]:
    """TensorBoard tag -> (matrix, row labels, column labels) for `metrics.heatmap`: effective
    (ε-mixed) probabilities of A's topic rows and of B's region rows alone (the log's "region:"
    entries), and per regional topic the routing of a prompt from each one region."""
    tables = probability_tables(state, tau, eps)
    langs = spec.languages.names
    out = {"router/topic_x_language": (tables["topic_effective"], spec.topics.names, langs),
           "router/region_x_language": (tables["region_effective"], spec.regions.names, langs)}
    for t, m in routing_tables(spec, state, tau, eps).items():
        out[f"router/routing/{t}"] = (m, spec.regions.names, langs)
    return out


def log_record(spec: RouterSpec, state: RouterState, tau, eps, *, max_keys: int | None = 100,
               digits: int | None = 6, step: int | None = None) -> dict:
    """One JSONL record; at most `max_keys` topic rows and `max_keys` region rows, in vocabulary order.
    `step` defaults to the router's own step counter."""
    tables = probability_tables(state, tau, eps)
    codes = spec.languages.names

    def row(p):
        return {c: (round(float(v), digits) if digits is not None else float(v)) for c, v in zip(codes, p)}

    probs = {}
    for kind, names in (("topic", spec.topics.names), ("region", spec.regions.names)):
        for i, name in enumerate(names[:max_keys] if max_keys is not None else names):
            probs[f"{kind}:{name}"] = {"softmax": row(tables[f"{kind}_softmax"][i]),
                                       "effective": row(tables[f"{kind}_effective"][i])}
    return {"step": int(state.step) if step is None else int(step), "probs": probs}


class RouterLog:
    """Appends `log_record` lines to a JSONL file; disabled (no file) on processes other than 0."""

    def __init__(self, path: str | os.PathLike, spec: RouterSpec, *, max_keys: int | None = 100,
                 digits: int | None = 6, enabled: bool = True):
        self.path, self.spec, self.max_keys, self.digits, self.enabled = path, spec, max_keys, digits, enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, state: RouterState, tau, eps, step: int | None = None) -> dict:
        rec = log_record(self.spec, state, tau, eps, max_keys=self.max_keys, digits=self.digits, step=step)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return rec


def read_log(path: str | os.PathLike) -> list[dict]:
    """All records of a router JSONL file (for colabs and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
