"""The LRPO language router: a contextual bandit as pure functions of a `RouterState` pytree.

Per prompt with topic t and regions g (multi-hot), the logits over L languages are

    z = A[t] + 1[t is regional] * sum_g B[g],       p = softmax(z / tau),

each rollout is drawn from p, or uniformly with probability eps, and the first K_on rollouts of a
group stay in the question's own language (rows of "fixed" topics, e.g. Translation, all do).
Rewards are buffered per (topic, region cell, language); every M steps the per-cell means are
normalised across the languages observed in the cell (none / center / zscore) and folded into A
(per topic) and B (per region) by an EMA with rate alpha. See lrpo_reference.md §1 for the
reference's exact behaviour and §7 for the bugs we do not copy:

* A and B get ONE EMA step per update. The reference applies the topic EMA once per region cell
  (about 20 times per update for "Regional Knowledge"); `reference_compat=True` reproduces that,
  with cells visited in region-index order (the reference uses first-appearance order).
* B is learned only from regional topics' region cells; a regional prompt without a region adds
  nothing to B (the reference created and updated a B["None"] row that no prompt ever reads).
* tau and eps anneal independently: the reference's early return skips eps annealing whenever
  tau is constant.
* Everything is seeded and checkpointed with the train state (the reference used unseeded global
  numpy and lost the router on resume).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax import vocab as vocab_lib

NORMS = ("none", "center", "zscore")


@flax.struct.dataclass
class RouterState:
    A: jax.Array        # f32 [T, L] topic x language logits
    B: jax.Array        # f32 [G, L] region x language logits
    sums: jax.Array     # f32 [T, G + 1, L] buffered reward sums (cell G = "no region")
    counts: jax.Array   # f32 [T, G + 1, L] buffered rollout counts
    step: jax.Array     # i32: observe() calls so far (training steps), drives annealing
    updates: jax.Array  # i32: EMA updates applied so far


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    """Static router settings (vocabularies and flags); numbers that change per step are arguments."""

    languages: vocab_lib.Vocab
    topics: vocab_lib.Vocab
    regions: vocab_lib.Vocab
    regional_topics: tuple[str, ...] = (vocab_lib.REGIONAL_TOPIC,)
    fixed_topics: tuple[str, ...] = (vocab_lib.TRANSLATION_TOPIC,)

    def __post_init__(self):
        for name in self.regional_topics + self.fixed_topics:
            self.topics.index(name, "router.regional_topics / router.fixed_topics")

    @property
    def regional_mask(self) -> np.ndarray:
        return np.array([t in self.regional_topics for t in self.topics.names])

    @property
    def fixed_mask(self) -> np.ndarray:
        return np.array([t in self.fixed_topics for t in self.topics.names])

    # --- host-side encoding of rows ------------------------------------------------------------
    def encode(self, topics: Sequence[str], regions: Sequence[Sequence[str]], languages: Sequence[str],
               where: str = "row") -> dict[str, np.ndarray]:
        """Names -> arrays (topic ids, region multi-hot, original language ids, fixed-row mask).

        Errors name the row and field, e.g. "unknown region 'Atlantis' (row 3, field region)".
        """
        n = len(topics)
        topic_ids = np.zeros(n, np.int32)
        region_mh = np.zeros((n, len(self.regions)), np.float32)
        lang_ids = np.zeros(n, np.int32)
        for i in range(n):
            topic_ids[i] = self.topics.index(topics[i], f"{where} {i}, field topic")
            for g in regions[i]:
                region_mh[i, self.regions.index(g, f"{where} {i}, field region")] = 1.0
            lang_ids[i] = self.languages.index(languages[i], f"{where} {i}, field language")
        return {"topic": topic_ids, "regions": region_mh, "orig_lang": lang_ids,
                "fixed": self.fixed_mask[topic_ids]}


def parse_mix(mix: str, languages: vocab_lib.Vocab, where: str) -> np.ndarray:
    """Reference mix string "code:weight,..." -> logits log(max(w, 1e-6)), unlisted -> log(1e-6)."""
    logits = np.full(len(languages), math.log(1e-6), np.float32)
    for part in filter(None, (p.strip() for p in mix.split(","))):
        code, sep, weight = part.partition(":")
        if not sep:
            raise ValueError(f"{where}: mix entry {part!r} is not 'code:weight'")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"{where}: weight {weight!r} of {code!r} is not a number") from None
        logits[languages.index(code.strip(), where)] = math.log(max(w, 1e-6))
    return logits


def init_state(spec: RouterSpec, topic_prior: dict[str, str] | None = None,
               region_prior: dict[str, str] | None = None) -> RouterState:
    """Uniform (zero) A and B, or priors given as reference mix strings per topic/region name."""
    t, g, l = len(spec.topics), len(spec.regions), len(spec.languages)
    A, B = np.zeros((t, l), np.float32), np.zeros((g, l), np.float32)
    for name, mix in (topic_prior or {}).items():
        A[spec.topics.index(name, "router.topic_prior")] = parse_mix(mix, spec.languages, f"router.topic_prior[{name!r}]")
    for name, mix in (region_prior or {}).items():
        B[spec.regions.index(name, "router.region_prior")] = parse_mix(mix, spec.languages, f"router.region_prior[{name!r}]")
    zeros = jnp.zeros((t, g + 1, l), jnp.float32)
    return RouterState(A=jnp.asarray(A), B=jnp.asarray(B), sums=zeros, counts=zeros,
                       step=jnp.int32(0), updates=jnp.int32(0))


# ------------------------------------------------------------------------------------------------
# Schedules.
# ------------------------------------------------------------------------------------------------
def schedule(step, init: float, minimum: float, decay: float) -> jax.Array:
    """max(minimum, init * decay**step), as an f32 array (traced step: no recompiles)."""
    return jnp.maximum(jnp.float32(minimum), jnp.float32(init) * jnp.float32(decay) ** jnp.asarray(step, jnp.float32))


# ------------------------------------------------------------------------------------------------
# Routing.
# ------------------------------------------------------------------------------------------------
def logits_for(state: RouterState, topic_ids, region_mh, regional_mask) -> jax.Array:
    """z [P, L] = A[t] + 1[t regional] * region_multi_hot @ B."""
    regional = jnp.asarray(regional_mask)[topic_ids].astype(jnp.float32)
    return state.A[topic_ids] + regional[:, None] * (region_mh @ state.B)


def probabilities(state: RouterState, topic_ids, region_mh, regional_mask, tau, eps):
    """(softmax(z / tau), effective = (1 - eps) softmax + eps / L), each [P, L]."""
    z = logits_for(state, topic_ids, region_mh, regional_mask)
    p = jax.nn.softmax(z / jnp.maximum(tau, 1e-6), axis=-1)
    return p, (1.0 - eps) * p + eps / z.shape[-1]


def assign(state: RouterState, topic_ids, region_mh, orig_lang, fixed_mask, key, *, K: int, K_on: int,
           tau, eps, regional_mask, fixed_probs=None) -> jax.Array:
    """Language ids [P, K] for P prompts x K rollouts (jittable; K and K_on static).

    `fixed_probs` [L + 1] (optional) replaces the learned router by a constant mix for baselines
    (LRPO-Fixed, input-/EN-dominant): entry L is the mass of "the question's own language".
    """
    if not 0 <= K_on <= K:
        raise ValueError(f"router.K_on={K_on} must be within [0, rollout.K={K}]")
    p_num, l_num = topic_ids.shape[0], state.A.shape[1]
    k_explore, k_uniform, k_draw = jax.random.split(key, 3)
    if fixed_probs is None:
        z = logits_for(state, topic_ids, region_mh, regional_mask) / jnp.maximum(tau, 1e-6)
        drawn = jax.random.categorical(k_draw, z[:, None, :], axis=-1, shape=(p_num, K))
        explore = jax.random.uniform(k_explore, (p_num, K)) < eps
        uniform = jax.random.randint(k_uniform, (p_num, K), 0, l_num)
        langs = jnp.where(explore, uniform, drawn)
    else:
        logits = jnp.log(jnp.maximum(jnp.asarray(fixed_probs, jnp.float32), 1e-30))
        drawn = jax.random.categorical(k_draw, logits, shape=(p_num, K))
        langs = jnp.where(drawn == l_num, orig_lang[:, None], drawn)
    on_policy = jnp.arange(K)[None, :] < K_on
    keep = on_policy | jnp.asarray(fixed_mask, bool)[:, None]
    return jnp.where(keep, orig_lang[:, None], langs).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# Learning.
# ------------------------------------------------------------------------------------------------
def cell_weights(region_mh) -> jax.Array:
    """[N, G + 1]: a rollout counts once in each of its regions, or in the "no region" cell G."""
    none = (region_mh.sum(-1, keepdims=True) == 0).astype(jnp.float32)
    return jnp.concatenate([region_mh.astype(jnp.float32), none], axis=-1)


def observe(state: RouterState, topic_ids, region_mh, lang_ids, rewards, valid) -> RouterState:
    """Buffers N rollouts' rewards per (topic, region cell, language) and advances the step."""
    num_t, num_l = state.A.shape[0], state.A.shape[1]
    t1 = jax.nn.one_hot(topic_ids, num_t, dtype=jnp.float32)
    l1 = jax.nn.one_hot(lang_ids, num_l, dtype=jnp.float32)
    w = cell_weights(region_mh) * valid.astype(jnp.float32)[:, None]
    counts = jnp.einsum("nt,ng,nl->tgl", t1, w, l1)
    sums = jnp.einsum("nt,ng,nl->tgl", t1, w * rewards.astype(jnp.float32)[:, None], l1)
    return state.replace(sums=state.sums + sums, counts=state.counts + counts, step=state.step + 1)


def normalized_cell_values(state: RouterState, norm: str, eps: float = 1e-6):
    """(x [T, G + 1, L], observed mask): per-cell mean rewards normalised across the languages
    observed in each (topic, region) cell; population std (ddof 0); one language -> 0."""
    if norm not in NORMS:
        raise ValueError(f"router.norm={norm!r}; expected one of {NORMS}")
    observed = state.counts > 0
    mean = state.sums / jnp.maximum(state.counts, 1.0)
    if norm == "none":
        return mean, observed
    o = observed.astype(jnp.float32)
    n = o.sum(-1, keepdims=True)
    m = (mean * o).sum(-1, keepdims=True) / jnp.maximum(n, 1.0)
    centered = (mean - m) * o
    if norm == "center":
        return centered, observed
    std = jnp.sqrt((centered ** 2).sum(-1, keepdims=True) / jnp.maximum(n, 1.0))
    return centered / (std + eps), observed


def _ema(old, x, alpha, where):
    return jnp.where(where, (1.0 - alpha) * old + alpha * x, old)


def update(state: RouterState, alpha, norm: str, regional_mask, reference_compat: bool = False) -> RouterState:
    """Folds the buffer into A and B, then clears it (see the module docstring)."""
    x, observed = normalized_cell_values(state, norm)
    regional = jnp.asarray(regional_mask, bool)
    num_g = state.B.shape[0]
    if reference_compat:
        A, B = state.A, state.B
        for g in range(num_g + 1):  # one topic EMA per region cell, in region-index order
            A = _ema(A, x[:, g], alpha, observed[:, g])
        for t in range(state.A.shape[0]):  # B[g] from each regional topic's cell (t, g)
            hit = observed[t, :num_g] & regional[t]
            B = _ema(B, x[t, :num_g], alpha, hit)
    else:
        w = state.counts
        w_a = w.sum(1)
        x_a = (x * w).sum(1) / jnp.maximum(w_a, 1e-12)  # count-weighted over region cells
        A = _ema(state.A, x_a, alpha, w_a > 0)
        w_b = (w[:, :num_g] * regional[:, None, None]).sum(0)
        x_b = (x[:, :num_g] * w[:, :num_g] * regional[:, None, None]).sum(0) / jnp.maximum(w_b, 1e-12)
        B = _ema(state.B, x_b, alpha, w_b > 0)
    zeros = jnp.zeros_like(state.sums)
    return state.replace(A=A, B=B, sums=zeros, counts=zeros, updates=state.updates + 1)


def maybe_update(state: RouterState, every: int, alpha, norm: str, regional_mask,
                 reference_compat: bool = False) -> RouterState:
    """`update` when step % every == 0 (call after `observe`), as a `lax.cond` for jitted steps."""
    do = (state.step % max(int(every), 1)) == 0
    return jax.lax.cond(do, lambda s: update(s, alpha, norm, regional_mask, reference_compat),
                        lambda s: s, state)


# ------------------------------------------------------------------------------------------------
# Logging (the reference's JSONL format) and heatmaps.
# ------------------------------------------------------------------------------------------------
def probability_tables(state: RouterState, tau, eps) -> dict[str, np.ndarray]:
    """Row-wise softmax(row / tau) and effective probabilities of A (topics) and B (regions)."""
    tau = max(float(tau), 1e-6)
    out = {}
    for name, rows in (("topic", np.asarray(state.A)), ("region", np.asarray(state.B))):
        z = rows / tau
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[f"{name}_softmax"] = p
        out[f"{name}_effective"] = (1 - float(eps)) * p + float(eps) / p.shape[-1]
    return out


def log_record(spec: RouterSpec, state: RouterState, tau, eps, max_keys: int = 100,
               only_seen_regions: bool = True) -> dict:
    """One JSONL line: {"step", "probs": {"topic:<name>": {"softmax": {code: p}, "effective": ...},
    "region:<name>": ...}}; region rows are B alone (as the reference logs them)."""
    tables = probability_tables(state, tau, eps)
    codes = spec.languages.names
    probs = {}
    for kind, names in (("topic", spec.topics.names), ("region", spec.regions.names)):
        shown = 0
        for i, name in enumerate(names):
            if shown >= max_keys:
                break
            if kind == "region" and only_seen_regions and not np.any(np.asarray(state.B)[i]):
                continue  # untouched region rows are uniform: skip them, as the reference's lazy dict did
            probs[f"{kind}:{name}"] = {
                "softmax": {c: round(float(p), 6) for c, p in zip(codes, tables[f"{kind}_softmax"][i])},
                "effective": {c: round(float(p), 6) for c, p in zip(codes, tables[f"{kind}_effective"][i])}}
            shown += 1
    return {"step": int(state.step), "probs": probs}


class RouterLog:
    """Appends `log_record` lines to a JSONL file (only on process 0)."""

    def __init__(self, path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
