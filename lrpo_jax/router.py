"""The LRPO language router: a contextual bandit as pure functions of a `RouterState` pytree.

For a prompt with topic t and regions g (multi-hot), the logits over the L languages are

    z = A[t] + 1[t is regional] * sum_g B[g],        p = softmax(z / max(tau, 1e-6)),

each rollout takes a uniform arm with probability eps and otherwise draws from p; the first K_on
rollouts of a group stay in the question's own language, and so do all rollouts of "fixed" rows
(the Translation topic). Rewards are buffered per (topic, region cell, language) with one extra
"no region" cell; every M steps the per-cell means are normalised across the languages observed in
the cell (none / center / zscore) and folded into A and B with an EMA of rate alpha.
lrpo_reference.md §1 describes the reference; where we differ on purpose (§7):

* ONE EMA step per update for every observed (topic, language) of A and (region, language) of B.
  The EMA target of A[t, l] is the count-weighted mean of the normalised values x[t, g, l] over the
  region cells g (the "no region" cell included); the target of B[g, l] is the count-weighted mean
  of x[t, g, l] over the regional topics t. Counts are cell counts, so a rollout with k regions
  weighs k times, once in each of its cells, exactly as it enters the reference's cells.
  The reference instead applies the topic EMA once per region cell, sequentially in the order the
  cells were first seen (about 20 steps per update for "Regional Knowledge", effective rate
  1 - (1 - alpha)^k, dominated by the last cells). `reference_compat=True` reproduces that
  sequence, using the first-seen order tracked in the buffer (ties inside one rollout: region-index
  order; the reference uses the row's list order), in float32, as the reference stores A and B
  (its per-cell means and z-scores are Python floats). Two differences stay: a prompt's "no
  region" is one cell here, where the reference keeps separate "None" and "[]" cells (two EMA
  steps for a topic with both), and a region listed twice in one row counts once here, twice there.
* B is learned only from regional topics' region cells. A regional prompt without a region feeds
  A only; the reference also EMA-updated a B["None"] row that no prompt ever reads.
* Optional `min_count`: (topic, region, language) cells with fewer rollouts are not learned from
  (default 1 = the reference; see `cell_values`).
* tau and eps anneal independently (`schedule`); the reference's early return skipped the eps
  annealing whenever tau was constant.
* All randomness comes from explicit keys and the state is a pytree checkpointed with the train
  state (the reference used unseeded global numpy and lost the router on resume).

Observation policy (lrpo_reference.md §7.4): like the reference, quota (original-language) and
fixed-row rollouts are observed by default (`observed_rollouts(..., observe_quota=True)`). That
biases the original language's cell mean: it is estimated mostly on prompts originally in that
language (K_on extra samples per prompt, whatever the router says), while the other arms are
estimated on the cell's whole prompt mix, so a same-language advantage of the reward (e.g. raw
cosine of same-language pairs) lands on that arm. `observe_quota=False` keeps only routed rollouts.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax import vocab as vocab_lib

NORMS = ("none", "center", "zscore")

# config.router ranges: key -> (low, high, low inclusive). Checked by `check_config` before anything
# runs (trainer and simulator alike), so a typo fails at start-up, not inside a traced update.
_RANGES = {"alpha": (0.0, 1.0, False), "eps_init": (0.0, 1.0, True), "eps_min": (0.0, 1.0, True),
           "eps_decay": (0.0, 1.0, False), "tau_init": (0.0, float("inf"), False),
           "tau_min": (0.0, float("inf"), False), "tau_decay": (0.0, 1.0, False),
           "update_every": (1, float("inf"), True)}


def check_config(r) -> None:
    """Validates config.router's enumerated and numeric settings, naming the key."""
    from lrpo_jax import config_lib
    if r.norm not in NORMS:
        raise ValueError(f"config.router.norm={r.norm!r}; expected one of {NORMS}")
    config_lib.check_ranges(r, _RANGES, "config.router")
_NEVER = np.iinfo(np.int32).max  # first_seen of a cell not observed since the last update


@flax.struct.dataclass
class RouterState:
    A: jax.Array           # f32 [T, L] topic x language logits
    B: jax.Array           # f32 [G, L] region x language logits
    sums: jax.Array        # f32 [T, G + 1, L] buffered reward sums; cell G = "no region"
    counts: jax.Array      # f32 [T, G + 1, L] buffered rollout counts
    first_seen: jax.Array  # i32 [T, G + 1, L] arrival rank of each cell's first rollout (reference_compat order)
    buffered: jax.Array    # i32 rollouts offered to `observe` since the last update (ranks arrivals)
    step: jax.Array        # i32 `observe` calls so far = training steps; drives annealing and M
    updates: jax.Array     # i32 updates applied so far


@dataclasses.dataclass(frozen=True)
class RowFields:
    """Field names used in error messages (the reference's parquet schema by default)."""

    topic: str = "ability"
    region: str = "extra_info.region"
    language: str = "extra_info.language"


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    """Static router settings: vocabularies and which topics are regional / fixed."""

    languages: vocab_lib.Vocab
    topics: vocab_lib.Vocab
    regions: vocab_lib.Vocab
    regional_topics: tuple[str, ...] = (vocab_lib.REGIONAL_TOPIC,)
    fixed_topics: tuple[str, ...] = (vocab_lib.TRANSLATION_TOPIC,)

    def __post_init__(self):
        for name in self.regional_topics:
            self.topics.index(name, "router.regional_topics")
        for name in self.fixed_topics:
            self.topics.index(name, "router.fixed_topics")

    @classmethod
    def from_config(cls, cfg) -> "RouterSpec":
        """From a `config.router`-style ConfigDict (languages, topics, regions, regional/fixed topics)."""
        return cls(vocab_lib.language_vocab(tuple(cfg.languages), "config.router.languages"),
                   vocab_lib.topic_vocab(tuple(cfg.topics), "config.router.topics"),
                   vocab_lib.region_vocab(tuple(cfg.regions), "config.router.regions"),
                   tuple(cfg.regional_topics), tuple(cfg.fixed_topics))

    @property
    def regional_topic_mask(self) -> np.ndarray:
        """bool [T]: topics whose prompts add their regions' B rows."""
        return np.array([t in self.regional_topics for t in self.topics.names])

    @property
    def fixed_topic_mask(self) -> np.ndarray:
        """bool [T]: topics whose rollouts all stay in the question's language."""
        return np.array([t in self.fixed_topics for t in self.topics.names])

    def encode(self, topics: Sequence[str], regions: Sequence[Any], languages: Sequence[str], *,
               first_row: int = 0, fields: RowFields = RowFields()) -> dict[str, np.ndarray]:
        """Host side: names -> topic ids [P], region multi-hot f32 [P, G], original language ids [P]
        and the fixed-row mask [P].

        A row's region may be a name, a list of names, or None / "" / [] (no region). Languages may
        be ISO codes or English names. Errors name the row and field, e.g.
        "unknown region 'Atlantis' (row 12, field extra_info.region)".
        """
        if not len(topics) == len(regions) == len(languages):
            raise ValueError(f"encode: {len(topics)} topics, {len(regions)} regions, {len(languages)} languages")
        n = len(topics)
        topic_ids = np.zeros(n, np.int32)
        region_mh = np.zeros((n, len(self.regions)), np.float32)
        lang_ids = np.zeros(n, np.int32)
        for i in range(n):
            row = first_row + i
            topic_ids[i] = self.topics.index(topics[i], f"row {row}, field {fields.topic}")
            names = regions[i]
            if names is None or isinstance(names, str):
                names = [names] if names else []
            elif not isinstance(names, (list, tuple, np.ndarray)):
                raise vocab_lib.UnknownKeyError(f"a region must be a name, a list of names or None, got "
                                                f"{names!r} (row {row}, field {fields.region})")
            for g in names:
                region_mh[i, self.regions.index(g, f"row {row}, field {fields.region}")] = 1.0
            where = f"row {row}, field {fields.language}"
            lang_ids[i] = self.languages.index(vocab_lib.normalize_language(languages[i], where), where)
        return {"topic": topic_ids, "regions": region_mh, "orig_lang": lang_ids,
                "fixed": self.fixed_topic_mask[topic_ids]}


# ------------------------------------------------------------------------------------------------
# Initial state.
# ------------------------------------------------------------------------------------------------
def parse_mix(mix: str, languages: vocab_lib.Vocab, where: str) -> np.ndarray:
    """Reference mix string "code:weight,..." -> logits log(max(w, 1e-6)); unlisted arms log(1e-6)."""
    logits = np.full(len(languages), math.log(1e-6), np.float32)
    for part in filter(None, (p.strip() for p in mix.split(","))):
        code, sep, weight = part.partition(":")
        if not sep:
            raise ValueError(f"{where}: mix entry {part!r} is not 'code:weight'")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"{where}: weight {weight.strip()!r} of {code.strip()!r} is not a number") from None
        if not math.isfinite(w):
            raise ValueError(f"{where}: weight of {code.strip()!r} is {w}")
        logits[languages.index(code.strip(), where)] = math.log(max(w, 1e-6))
    return logits


def _priors(value: Mapping[str, str] | str | None, where: str) -> dict[str, str]:
    """A prior given as a dict or as a JSON object string (configs store strings); "" = none."""
    if not value:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not a JSON object of mix strings ({e})") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping name -> 'code:weight,...', got {type(value).__name__}")
    return dict(value)


def init_state(spec: RouterSpec, topic_prior: Mapping[str, str] | str | None = None,
               region_prior: Mapping[str, str] | str | None = None) -> RouterState:
    """Uniform (zero) A and B, optionally with reference-style mix-string priors per topic / region."""
    t, g, l = len(spec.topics), len(spec.regions), len(spec.languages)
    A, B = np.zeros((t, l), np.float32), np.zeros((g, l), np.float32)
    for name, mix in _priors(topic_prior, "router.topic_prior").items():
        A[spec.topics.index(name, "router.topic_prior")] = parse_mix(
            mix, spec.languages, f"router.topic_prior[{name!r}]")
    for name, mix in _priors(region_prior, "router.region_prior").items():
        B[spec.regions.index(name, "router.region_prior")] = parse_mix(
            mix, spec.languages, f"router.region_prior[{name!r}]")
    return _cleared(RouterState(A=jnp.asarray(A), B=jnp.asarray(B), sums=None, counts=None, first_seen=None,
                                buffered=None, step=jnp.int32(0), updates=jnp.int32(0)))


def _cleared(state: RouterState) -> RouterState:
    shape = (state.A.shape[0], state.B.shape[0] + 1, state.A.shape[1])
    zeros = jnp.zeros(shape, jnp.float32)
    return state.replace(sums=zeros, counts=zeros, first_seen=jnp.full(shape, _NEVER, jnp.int32),
                         buffered=jnp.int32(0))


# ------------------------------------------------------------------------------------------------
# Schedules.
# ------------------------------------------------------------------------------------------------
def schedule(step, init: float, minimum: float, decay: float) -> jax.Array:
    """max(minimum, init * decay**step) as an f32 array (a traced step does not recompile)."""
    s = jnp.asarray(step, jnp.float32)
    return jnp.maximum(jnp.float32(minimum), jnp.float32(init) * jnp.float32(decay) ** s)


def tau_eps(step, cfg) -> tuple[jax.Array, jax.Array]:
    """(tau_s, eps_s) from a `config.router`: two independent schedules of the training step."""
    return (schedule(step, cfg.tau_init, cfg.tau_min, cfg.tau_decay),
            schedule(step, cfg.eps_init, cfg.eps_min, cfg.eps_decay))


# ------------------------------------------------------------------------------------------------
# Routing.
# ------------------------------------------------------------------------------------------------
def logits(state: RouterState, topic_ids, region_mh, regional_topic_mask) -> jax.Array:
    """z [P, L] = A[t] + 1[t regional] * (region_multi_hot @ B)."""
    regional = jnp.asarray(regional_topic_mask)[topic_ids].astype(jnp.float32)
    return state.A[topic_ids] + regional[:, None] * (jnp.asarray(region_mh, jnp.float32) @ state.B)


def probabilities(state: RouterState, topic_ids, region_mh, regional_topic_mask, tau, eps):
    """(softmax(z / tau), effective = (1 - eps) softmax + eps / L), each [P, L]: the per-rollout
    distribution of a routed (non-quota, non-fixed) rollout."""
    z = logits(state, topic_ids, region_mh, regional_topic_mask)
    p = jax.nn.softmax(z / jnp.maximum(tau, 1e-6), axis=-1)
    return p, (1.0 - eps) * p + eps / z.shape[-1]


def assign(state: RouterState, topic_ids, region_mh, orig_lang, fixed_lang_mask, key, *, K: int, K_on: int,
           tau, eps, regional_topic_mask, fixed_probs=None) -> jax.Array:
    """Language ids int32 [P, K] for P prompts x K rollouts. Jittable; K and K_on are static.

    Prompt i draws from `fold_in(key, i)`, so its languages depend only on (key, i, its inputs),
    not on the rest of the batch. Each routed rollout uses three uniforms: one for the eps coin,
    one for the uniform arm, one inverted through the CDF of p (one uniform per draw instead of L
    Gumbels: threefry bits dominate the cost on CPU).
    `fixed_probs` [L + 1] or [L + 2] (optional) replaces the learned router by a constant mix
    (LRPO-Fixed and the fixed-mix baselines): entry L is the mass of "the question's own language",
    entry L + 1 (if present) a mass spread evenly over the other L - 1 languages of each prompt
    ("25% input + rest uniform" gives the input exactly 25%); eps is unused.
    """
    if not 0 <= K_on <= K:
        raise ValueError(f"router K_on={K_on} must be within [0, K={K}]")
    num_p, num_l = topic_ids.shape[0], state.A.shape[1]
    if fixed_probs is None:
        z = logits(state, topic_ids, region_mh, regional_topic_mask)
        p = jax.nn.softmax(z / jnp.maximum(tau, 1e-6), axis=-1)
        eps = jnp.asarray(eps, jnp.float32)
    else:
        probs = jnp.asarray(fixed_probs, jnp.float32)
        if probs.shape not in ((num_l + 1,), (num_l + 2,)):
            raise ValueError(f"fixed_probs must have shape ({num_l + 1},) (languages + own) or ({num_l + 2},) "
                             f"(+ others), got {probs.shape}")
        probs = probs / probs.sum()
        p = jnp.broadcast_to(probs[:num_l + 1], (num_p, num_l + 1))
        if probs.shape[0] == num_l + 2:  # "others": uniform over each prompt's non-own languages
            not_own = 1.0 - jax.nn.one_hot(jnp.asarray(orig_lang, jnp.int32), num_l)
            p = p.at[:, :num_l].add(probs[num_l + 1] * not_own / max(num_l - 1, 1))
        eps = jnp.float32(0.0)
    cdf = jnp.cumsum(p, axis=-1)
    keep = (jnp.arange(K) < K_on)[None, :] | jnp.asarray(fixed_lang_mask, bool)[:, None]

    def one_prompt(cdf_row, own, keep_row, key_row):
        u_draw, u_explore, u_arm = jax.random.uniform(key_row, (3, K))
        # Index of the first CDF entry above u; `<=` skips zero-probability arms.
        drawn = jnp.minimum(jnp.sum(cdf_row[None, :] <= (u_draw * cdf_row[-1])[:, None], -1), cdf_row.shape[0] - 1)
        drawn = jnp.where(drawn == num_l, own, drawn)  # only reachable with fixed_probs
        uniform = jnp.minimum((u_arm * num_l).astype(jnp.int32), num_l - 1)
        return jnp.where(keep_row, own, jnp.where(u_explore < eps, uniform, drawn))

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_p))
    return jax.vmap(one_prompt)(cdf, jnp.asarray(orig_lang, jnp.int32), keep, keys).astype(jnp.int32)


def observed_rollouts(fixed_lang_mask, K: int, K_on: int, *, observe_quota: bool = True,
                      observe_fixed: bool = True) -> jax.Array:
    """bool [P, K]: which rollouts of `assign`'s layout enter the router statistics.

    Reference behaviour (both True): every rollout, quota and fixed rows included (see the module
    docstring for the bias this puts on the original language).
    """
    fixed = jnp.asarray(fixed_lang_mask, bool)[:, None]
    quota = (jnp.arange(K) < K_on)[None, :]
    keep = jnp.ones((fixed.shape[0], K), bool)
    if not observe_quota:
        keep &= ~quota
    if not observe_fixed:
        keep &= ~fixed
    return keep


# ------------------------------------------------------------------------------------------------
# Learning.
# ------------------------------------------------------------------------------------------------
def cell_weights(region_mh) -> jax.Array:
    """f32 [N, G + 1]: a rollout counts once in each of its regions, or once in the "no region" cell G."""
    mh = (jnp.asarray(region_mh) > 0).astype(jnp.float32)
    none = (mh.sum(-1, keepdims=True) == 0).astype(jnp.float32)
    return jnp.concatenate([mh, none], axis=-1)


def observe(state: RouterState, topic_ids, region_mh, lang_ids, rewards, valid_mask) -> RouterState:
    """Buffers N rollouts (flat arrays [N], region_mh [N, G]) per (topic, region cell, language) and
    advances `step` by one: call it once per training step with all of that step's rollouts."""
    num_t, num_c, num_l = state.sums.shape
    n = topic_ids.shape[0]
    w = cell_weights(region_mh) * jnp.asarray(valid_mask, jnp.float32)[:, None]                # [N, C]
    cells = jnp.arange(num_c)[None, :]
    flat = ((jnp.asarray(topic_ids, jnp.int32)[:, None] * num_c + cells) * num_l
            + jnp.asarray(lang_ids, jnp.int32)[:, None]).reshape(-1)
    w_flat = w.reshape(-1)
    # where, not a product: an invalid rollout may carry a NaN reward
    r_flat = jnp.where(w > 0, jnp.asarray(rewards, jnp.float32)[:, None], 0.0).reshape(-1)
    # Arrival rank (rollout, then region index) of each cell's first rollout: the order in which
    # the reference's dict would have created the cell.
    rank = ((state.buffered + jnp.arange(n, dtype=jnp.int32))[:, None] * num_c + cells).reshape(-1)
    rank = jnp.where(w_flat > 0, rank, _NEVER)
    size = num_t * num_c * num_l
    shape = state.sums.shape
    return state.replace(
        sums=state.sums + jnp.zeros(size, jnp.float32).at[flat].add(r_flat).reshape(shape),
        counts=state.counts + jnp.zeros(size, jnp.float32).at[flat].add(w_flat).reshape(shape),
        first_seen=jnp.minimum(state.first_seen, jnp.full(size, _NEVER, jnp.int32).at[flat].min(rank).reshape(shape)),
        buffered=state.buffered + n, step=state.step + 1)


def observe_groups(state: RouterState, topic_ids, region_mh, lang_ids, rewards, valid_mask, *, fixed_lang_mask,
                   K_on: int, observe_quota: bool = True, observe_fixed: bool = True) -> RouterState:
    """`observe` for a step laid out as `assign` returns it: topic_ids [P], region_mh [P, G],
    lang_ids / rewards / valid_mask [P, K]; `observed_rollouts` selects what is learned from."""
    k = lang_ids.shape[1]
    keep = observed_rollouts(fixed_lang_mask, k, K_on, observe_quota=observe_quota, observe_fixed=observe_fixed)
    valid = jnp.asarray(valid_mask, bool) & keep
    return observe(state, jnp.repeat(jnp.asarray(topic_ids), k), jnp.repeat(jnp.asarray(region_mh), k, axis=0),
                   lang_ids.reshape(-1), rewards.reshape(-1), valid.reshape(-1))


def cell_values(state: RouterState, norm: str, norm_eps: float = 1e-6,
                min_count: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(x f32 [T, G + 1, L], observed bool [T, G + 1, L]): per-cell mean rewards normalised across
    the languages observed in each (topic, region) cell.

    center: x = r - m; zscore: x = (r - m) / (s + norm_eps), with m, s the unweighted mean and the
    population std (ddof 0) over the observed languages (one observed language gives 0).
    Unobserved cells hold 0. A cell counts as observed when it has >= `min_count` rollouts; cells
    below that are dropped with the buffer. 1 is the reference; a language explored once or twice
    otherwise gets an extreme z-score from one noisy reward (§7.3; see the router_sim scenario
    `clean_min_count_1`).
    """
    if norm not in NORMS:
        raise ValueError(f"router norm={norm!r}; expected one of {NORMS}")
    observed = (state.counts > 0) & (state.counts >= min_count)
    o = observed.astype(jnp.float32)
    mean = state.sums / jnp.maximum(state.counts, 1.0) * o
    if norm == "none":
        return mean, observed
    n = jnp.maximum(o.sum(-1, keepdims=True), 1.0)
    centered = (mean - mean.sum(-1, keepdims=True) / n) * o
    if norm == "center":
        return centered, observed
    std = jnp.sqrt((centered ** 2).sum(-1, keepdims=True) / n)
    return centered / (std + norm_eps), observed


def _sequential_ema(old, x, observed, first_seen, alpha, axis: int):
    """Result of EMA steps old <- (1 - a) old + a x[i] over the observed entries i along `axis`,
    applied in increasing `first_seen` order: (1-a)^n old + sum_i a (1-a)^(#observed after i) x[i]."""
    o = observed.astype(jnp.float32)
    later = (jnp.expand_dims(first_seen, axis) > jnp.expand_dims(first_seen, axis + 1))  # [.., i, j, ..]: j after i
    after = (later * jnp.expand_dims(o, axis)).sum(axis + 1)  # per i: observed entries j later than i
    decay = 1.0 - alpha
    total = decay ** o.sum(axis)
    return total * old + (o * alpha * decay ** after * x).sum(axis)


def update(state: RouterState, alpha, norm: str, regional_topic_mask, *, reference_compat: bool = False,
           norm_eps: float = 1e-6, min_count: float = 1.0) -> RouterState:
    """Folds the buffer into A and B (see the module docstring), clears it, counts the update."""
    x, observed = cell_values(state, norm, norm_eps, min_count)
    alpha = jnp.asarray(alpha, jnp.float32)
    regional = jnp.asarray(regional_topic_mask, bool)[:, None, None]
    num_g = state.B.shape[0]
    in_b = observed[:, :num_g] & regional  # regional topics' region cells feed B
    if reference_compat:
        A = _sequential_ema(state.A, x, observed, state.first_seen, alpha, axis=1)
        B = _sequential_ema(state.B, x[:, :num_g], in_b, state.first_seen[:, :num_g], alpha, axis=0)
    else:
        w = jnp.where(observed, state.counts, 0.0)
        w_a = w.sum(1)
        A = jnp.where(w_a > 0, (1 - alpha) * state.A + alpha * (w * x).sum(1) / jnp.maximum(w_a, 1e-12), state.A)
        w_b = (w[:, :num_g] * in_b).sum(0)
        x_b = (w[:, :num_g] * in_b * x[:, :num_g]).sum(0) / jnp.maximum(w_b, 1e-12)
        B = jnp.where(w_b > 0, (1 - alpha) * state.B + alpha * x_b, state.B)
    return _cleared(state.replace(A=A, B=B, updates=state.updates + 1))


def maybe_update(state: RouterState, step, every_m, alpha, norm: str, regional_topic_mask, *,
                 reference_compat: bool = False, norm_eps: float = 1e-6, min_count: float = 1.0) -> RouterState:
    """`update` iff step > 0 and step % every_m == 0, as a `lax.cond` (usable in a jitted step).

    With `step = state.step` after `observe` this is the reference's schedule: updates after
    training steps M, 2M, ... over the rollouts of the last M steps.
    """
    step = jnp.asarray(step, jnp.int32)
    do = (step > 0) & (step % jnp.maximum(jnp.asarray(every_m, jnp.int32), 1) == 0)
    return jax.lax.cond(
        do, lambda s: update(s, alpha, norm, regional_topic_mask, reference_compat=reference_compat,
                             norm_eps=norm_eps, min_count=min_count),
        lambda s: s, state)
