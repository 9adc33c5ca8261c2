"""Router formulas vs plain-Python restatements of the reference (lrpo_reference.md §1) and of our
documented aggregation. Tolerances: exact formulas 1e-5 (f32); sampling frequencies 5 sigma."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax import router, router_log, vocab

LANGS = vocab.language_vocab(("de", "en", "fr", "ja"))
TOPICS = vocab.topic_vocab(("Regional Knowledge", "General Knowledge", "Translation"))
REGIONS = vocab.region_vocab(("Japan", "Europe", "France"))
SPEC = router.RouterSpec(LANGS, TOPICS, REGIONS)
RK, GK, TR = 0, 1, 2
MASK = SPEC.regional_topic_mask
DE, EN, FR, JA = range(4)
_assign = jax.jit(router.assign, static_argnames=("K", "K_on"))


def _random_state(seed=0):
    rng = np.random.default_rng(seed)
    s = router.init_state(SPEC)
    return s.replace(A=jnp.asarray(rng.normal(size=s.A.shape), jnp.float32),
                     B=jnp.asarray(rng.normal(size=s.B.shape), jnp.float32))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# assign
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau,eps", [(1.0, 0.0), (0.5, 0.3)])
def test_assign_frequencies_match_softmax_with_eps_mixing(tau, eps):
    state = _random_state()
    A, B = np.asarray(state.A), np.asarray(state.B)
    topic = jnp.array([RK, GK, RK])
    regions = jnp.array([[1, 0, 1], [1, 0, 0], [0, 0, 0]], jnp.float32)
    # Regional topic sums its regions' B rows; the region of a non-regional topic is ignored;
    # a regional prompt without a region uses A alone.
    z = np.stack([A[RK] + B[0] + B[2], A[GK], A[RK]])
    want = (1 - eps) * _softmax(z / tau) + eps / 4
    n = 20000
    langs = _assign(
        state, topic, regions, jnp.zeros(3, jnp.int32), jnp.zeros(3, bool), jax.random.key(1), K=n, K_on=0,
        tau=jnp.float32(tau), eps=jnp.float32(eps), regional_topic_mask=MASK)
    freq = np.stack([np.bincount(np.asarray(r), minlength=4) / n for r in langs])
    np.testing.assert_allclose(freq, want, atol=5 * math.sqrt(0.25 / n))
    soft, eff = router.probabilities(state, topic, regions, MASK, tau, eps)
    np.testing.assert_allclose(soft, _softmax(z / tau), rtol=1e-5)
    np.testing.assert_allclose(eff, want, rtol=1e-5)


def test_assign_eps_explores_uniformly_against_a_peaked_router():
    state = router.init_state(SPEC)
    state = state.replace(A=state.A.at[GK, FR].set(50.0))
    n = 40000
    langs = _assign(state, jnp.array([GK]), jnp.zeros((1, 3)), jnp.array([0]), jnp.array([False]),
                          jax.random.key(3), K=n, K_on=0, tau=1.0, eps=0.2, regional_topic_mask=MASK)
    freq = np.bincount(np.asarray(langs[0]), minlength=4) / n
    np.testing.assert_allclose(freq, [0.05, 0.05, 0.85, 0.05], atol=5 * math.sqrt(0.05 * 0.95 / n))


def test_assign_quota_fixed_rows_determinism_and_per_prompt_keys():
    state = _random_state()
    enc = SPEC.encode(["General Knowledge", "Translation", "Regional Knowledge"], [[], ["Japan"], "Japan"],
                      ["ja", "fr", "german"])
    kw = dict(K=8, K_on=2, tau=jnp.float32(1.0), eps=jnp.float32(0.2), regional_topic_mask=MASK)
    args = (state, enc["topic"], enc["regions"], enc["orig_lang"], enc["fixed"])
    a = _assign(*args, jax.random.key(0), **kw)
    b = _assign(*jax.tree.map(jnp.copy, args), jax.random.key(0), **kw)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == jnp.int32 and a.shape == (3, 8)
    np.testing.assert_array_equal(a[:, :2], [[JA, JA], [FR, FR], [DE, DE]])  # K_on quota
    np.testing.assert_array_equal(a[1], [FR] * 8)  # Translation: every rollout fixed
    assert not np.array_equal(a, _assign(*args, jax.random.key(1), **kw))
    # Prompt i draws from fold_in(key, i): dropping the last prompt leaves the others' languages.
    sub = _assign(state, enc["topic"][:2], enc["regions"][:2], enc["orig_lang"][:2], enc["fixed"][:2],
                        jax.random.key(0), **kw)
    np.testing.assert_array_equal(sub, a[:2])
    with pytest.raises(ValueError, match=r"K_on=9 must be within \[0, K=8\]"):
        router.assign(*args, jax.random.key(0), **dict(kw, K_on=9))


def test_fixed_mix_baseline():
    state = router.init_state(SPEC)
    probs = np.array([0, 0.25, 0, 0, 0.75], np.float32)  # 25% English, 75% the question's language
    n = 8000
    langs = _assign(state, jnp.zeros(2, jnp.int32), jnp.zeros((2, 3)), jnp.array([DE, JA]),
                          jnp.array([False, False]), jax.random.key(0), K=n, K_on=0, tau=1.0, eps=0.0,
                          regional_topic_mask=MASK, fixed_probs=probs)
    for row, own in ((0, DE), (1, JA)):
        freq = np.bincount(np.asarray(langs[row]), minlength=4) / n
        np.testing.assert_allclose(freq[[own, EN]], [0.75, 0.25], atol=0.025)
    # "others": 40% own language, 60% spread over each prompt's 3 other languages
    others = np.array([0, 0, 0, 0, 0.4, 0.6], np.float32)
    langs = _assign(state, jnp.zeros(2, jnp.int32), jnp.zeros((2, 3)), jnp.array([DE, JA]),
                    jnp.array([False, False]), jax.random.key(1), K=n, K_on=0, tau=1.0, eps=0.0,
                    regional_topic_mask=MASK, fixed_probs=others)
    for row, own in ((0, DE), (1, JA)):
        freq = np.bincount(np.asarray(langs[row]), minlength=4) / n
        want = np.full(4, 0.2)
        want[own] = 0.4  # not 0.4 + 0.6 / 4: the own language is not among "others"
        np.testing.assert_allclose(freq, want, atol=0.025)
    from lrpo_jax import trainer
    np.testing.assert_allclose(trainer.fixed_mix_probs("own:0.25,others:0.75", LANGS), [0, 0, 0, 0, 0.25, 0.75])
    with pytest.raises(ValueError, match=r"fixed_probs must have shape \(5,\)"):
        router.assign(state, jnp.zeros(2, jnp.int32), jnp.zeros((2, 3)), jnp.array([DE, JA]), jnp.zeros(2, bool),
                      jax.random.key(0), K=2, K_on=0, tau=1.0, eps=0.0, regional_topic_mask=MASK,
                      fixed_probs=probs[:4])


# ------------------------------------------------------------------------------------------------
# observe / update vs plain Python
# ------------------------------------------------------------------------------------------------
class ReferenceRouter:
    """The reference's buffer aggregation (`_update_lang_policy`) and `LangBanditPolicy.update`,
    restated in plain Python: dicts keyed by names, cells in insertion order, one EMA per cell."""

    def __init__(self, regional=("Regional Knowledge",)):
        self.A = {t: [0.0] * len(LANGS) for t in TOPICS.names}
        self.B = {g: [0.0] * len(LANGS) for g in REGIONS.names}
        self.regional = regional
        self.buffer = []

    def observe(self, rows):  # rows: (topic, region names tuple, lang index, reward)
        self.buffer.extend(rows)

    def update(self, alpha, norm, eps=1e-6):
        agg = {}
        for topic, regions, lang, reward in self.buffer:
            for rg in (regions or ("None",)):
                cell = agg.setdefault((topic, rg, lang), [0.0, 0])
                cell[0] += reward
                cell[1] += 1
        groups = {}
        for (t, g, _), (s, c) in agg.items():
            groups.setdefault((t, g), []).append(s / c)
        for (t, g, lang), (s, c) in agg.items():
            vals = groups[(t, g)]
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
            x = s / c
            if norm == "center":
                x = x - mu
            elif norm == "zscore":
                x = (x - mu) / (sd + eps)
            self.A[t][lang] = (1 - alpha) * self.A[t][lang] + alpha * x
            if t in self.regional and g != "None":  # the reference also wrote B["None"], never read
                self.B[g][lang] = (1 - alpha) * self.B[g][lang] + alpha * x
        self.buffer = []

    def arrays(self):
        return (np.array([self.A[t] for t in TOPICS.names]), np.array([self.B[g] for g in REGIONS.names]))


def _random_rows(rng, n):
    rows = []
    for _ in range(n):
        regions = tuple(REGIONS.names[i] for i in sorted(set(rng.integers(0, 3, rng.integers(0, 3)))))
        rows.append((TOPICS.names[rng.integers(0, 3)], regions, int(rng.integers(0, 4)), float(rng.random())))
    return rows


def _observe_rows(state, rows, valid=None):
    enc = SPEC.encode([r[0] for r in rows], [r[1] for r in rows], [LANGS.names[r[2]] for r in rows])
    valid = np.ones(len(rows), bool) if valid is None else valid
    return router.observe(state, enc["topic"], enc["regions"], enc["orig_lang"],
                          jnp.asarray([r[3] for r in rows], jnp.float32), jnp.asarray(valid))


def test_observe_counts_each_region_cell_and_no_region_cell():
    rows = [("Regional Knowledge", ("Japan", "France"), JA, 0.5), ("Regional Knowledge", (), EN, 0.25),
            ("General Knowledge", ("Europe",), DE, 1.0), ("General Knowledge", ("Europe",), DE, 0.0),
            ("Translation", (), FR, float("nan"))]  # invalid rollouts may carry garbage
    state = _observe_rows(router.init_state(SPEC), rows, valid=np.array([1, 1, 1, 1, 0], bool))
    want_c, want_s = np.zeros((3, 4, 4)), np.zeros((3, 4, 4))
    for (t, g, lang), r in [((RK, 0, JA), 0.5), ((RK, 2, JA), 0.5), ((RK, 3, EN), 0.25), ((GK, 1, DE), 1.0),
                            ((GK, 1, DE), 0.0)]:
        want_c[t, g, lang] += 1
        want_s[t, g, lang] += r
    np.testing.assert_array_equal(state.counts, want_c)
    np.testing.assert_allclose(state.sums, want_s, atol=1e-7)
    assert int(state.step) == 1 and int(state.buffered) == 5


def test_observe_groups_quota_flag():
    enc = SPEC.encode(["General Knowledge", "Translation"], [[], []], ["ja", "fr"])
    langs = jnp.array([[JA, JA, EN, DE], [FR, FR, FR, FR]])
    rewards = jnp.arange(8, dtype=jnp.float32).reshape(2, 4)
    valid = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    base = router.init_state(SPEC)
    every = router.observe_groups(base, enc["topic"], enc["regions"], langs, rewards, valid,
                                  fixed_lang_mask=enc["fixed"], K_on=2)
    routed = router.observe_groups(base, enc["topic"], enc["regions"], langs, rewards, valid,
                                   fixed_lang_mask=enc["fixed"], K_on=2, observe_quota=False, observe_fixed=False)
    assert float(every.counts[GK, 3, JA]) == 2 and float(every.sums[GK, 3, JA]) == 1.0  # quota observed
    assert float(every.counts[TR, 3, FR]) == 4 and float(every.counts[GK, 3, DE]) == 0  # invalid skipped
    assert float(routed.counts.sum()) == 1 and float(routed.sums[GK, 3, EN]) == 2.0


@pytest.mark.parametrize("norm", router.NORMS)
def test_reference_compat_equals_reference_algorithm(norm):
    """Random buffers over three steps, multi-region rows, every topic: identical A and B (the
    reference's per-cell sequential EMAs in dict insertion order)."""
    rng = np.random.default_rng(1)
    ref = ReferenceRouter()
    state = router.init_state(SPEC)
    for update in range(2):
        for _ in range(3):
            rows = _random_rows(rng, 40)
            ref.observe(rows)
            state = _observe_rows(state, rows)
        ref.update(0.3, norm)
        state = router.update(state, 0.3, norm, MASK, reference_compat=True)
        want_a, want_b = ref.arrays()
        np.testing.assert_allclose(state.A, want_a, atol=1e-5)
        np.testing.assert_allclose(state.B, want_b, atol=1e-5)
    assert float(state.counts.sum()) == 0 and int(state.buffered) == 0 and int(state.updates) == 2
    assert int(state.first_seen.min()) == np.iinfo(np.int32).max


def _cells(rows, norm, eps=1e-6):
    """Plain Python: {(t, g, lang): (count, normalised mean)} with g = region index or 3 (none)."""
    agg = {}
    for topic, regions, lang, reward in rows:
        for g in ([REGIONS.index(r) for r in regions] or [3]):
            c = agg.setdefault((TOPICS.index(topic), g, lang), [0.0, 0])
            c[0] += reward
            c[1] += 1
    out = {}
    for (t, g, lang), (s, c) in agg.items():
        vals = [v[0] / v[1] for (t2, g2, _), v in agg.items() if (t2, g2) == (t, g)]
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        x = s / c if norm == "none" else s / c - mu if norm == "center" else (s / c - mu) / (sd + eps)
        out[(t, g, lang)] = (c, x)
    return out


@pytest.mark.parametrize("norm", router.NORMS)
def test_default_update_is_one_count_weighted_ema_per_row(norm):
    rng = np.random.default_rng(2)
    rows = _random_rows(rng, 120)
    prior = _random_state(5)
    new = router.update(_observe_rows(prior, rows), 0.2, norm, MASK)
    cells = _cells(rows, norm)
    want_a, want_b = np.asarray(prior.A).copy(), np.asarray(prior.B).copy()
    for t in range(3):
        for lang in range(4):
            cw = [(c, x) for (t2, _, l2), (c, x) in cells.items() if (t2, l2) == (t, lang)]
            if cw:
                target = sum(c * x for c, x in cw) / sum(c for c, _ in cw)
                want_a[t, lang] = 0.8 * want_a[t, lang] + 0.2 * target
    for g in range(3):
        for lang in range(4):
            if (RK, g, lang) in cells:  # RK is the only regional topic
                want_b[g, lang] = 0.8 * want_b[g, lang] + 0.2 * cells[(RK, g, lang)][1]
    np.testing.assert_allclose(new.A, want_a, atol=1e-5)
    np.testing.assert_allclose(new.B, want_b, atol=1e-5)


def test_hand_computed_example_where_compat_and_default_differ():
    """Regional topic, language ja, norm none, alpha 0.5; rollouts (Europe, 0.2) then (Japan, 0.8)
    and one regional rollout without region (en, 1.0).
    Ours: A[ja] = 0.5 * mean(0.2, 0.8) = 0.25 (one EMA); reference: 0.5 * 0.2 = 0.1, then
    0.5 * 0.1 + 0.5 * 0.8 = 0.45; Japan first would give 0.5 * 0.4 + 0.5 * 0.2 = 0.3.
    B: Europe 0.1, Japan 0.4 in both. The no-region rollout moves A[en] to 0.5 and no B row."""
    def run(order, compat):
        rows = [("Regional Knowledge", (g,), JA, r) for g, r in order] + [("Regional Knowledge", (), EN, 1.0)]
        return router.update(_observe_rows(router.init_state(SPEC), rows), 0.5, "none", MASK,
                             reference_compat=compat)

    europe_first = [("Europe", 0.2), ("Japan", 0.8)]
    ours, ref = run(europe_first, False), run(europe_first, True)
    assert float(ours.A[RK, JA]) == pytest.approx(0.25, abs=1e-6)
    assert float(ref.A[RK, JA]) == pytest.approx(0.45, abs=1e-6)
    assert float(run(europe_first[::-1], True).A[RK, JA]) == pytest.approx(0.3, abs=1e-6)
    assert float(run(europe_first[::-1], False).A[RK, JA]) == pytest.approx(0.25, abs=1e-6)
    for s in (ours, ref):
        np.testing.assert_allclose(s.B[:, JA], [0.4, 0.1, 0.0], atol=1e-6)
        assert float(s.A[RK, EN]) == pytest.approx(0.5) and float(jnp.abs(s.B[:, EN]).max()) == 0.0


def test_normalisations_by_hand():
    rows = [("General Knowledge", (), DE, 0.2), ("General Knowledge", (), FR, 0.6), ("General Knowledge", (), FR, 0.6),
            ("Translation", (), JA, 0.9)]
    state = _observe_rows(router.init_state(SPEC), rows)
    for norm, de, fr in (("none", 0.2, 0.6), ("center", -0.2, 0.2), ("zscore", -0.2 / (0.2 + 1e-6), 0.2 / (0.2 + 1e-6))):
        x, observed = router.cell_values(state, norm)
        assert float(x[GK, 3, DE]) == pytest.approx(de, abs=1e-6)
        assert float(x[GK, 3, FR]) == pytest.approx(fr, abs=1e-6)
        # a cell with a single observed language: 0 after centering (the reference's zscore 0)
        assert float(x[TR, 3, JA]) == pytest.approx(0.9 if norm == "none" else 0.0, abs=1e-6)
        assert int(observed.sum()) == 3
    with pytest.raises(ValueError, match="router norm='minmax'; expected one of"):
        router.cell_values(state, "minmax")


def test_maybe_update_under_jit_every_m_steps():
    step = jax.jit(lambda s, r: router.maybe_update(
        _observe_rows(s, [("General Knowledge", (), DE, 1.0)]) if r else s, s.step + (1 if r else 0), 5, 0.1,
        "none", MASK), static_argnums=1)
    s = router.init_state(SPEC)
    s0 = router.maybe_update(s, 0, 5, 0.1, "none", MASK)  # step 0: nothing to do
    assert int(s0.updates) == 0
    for i in range(1, 11):
        s = step(s, True)
        assert int(s.step) == i and int(s.updates) == i // 5
        assert float(s.counts.sum()) == i % 5
    assert float(s.A[GK, DE]) == pytest.approx(0.1 + 0.9 * 0.1)  # two EMAs towards 1.0


# ------------------------------------------------------------------------------------------------
# schedules, priors, errors, logging
# ------------------------------------------------------------------------------------------------
def test_schedules_are_independent_and_traced():
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(tau_init=1.0, tau_min=1.0, tau_decay=1.0,
                                         eps_init=0.2, eps_min=0.0, eps_decay=0.995))
    tau, eps = router.tau_eps(100, cfg)
    # tau held constant must not freeze eps annealing (the reference's early return did).
    assert float(tau) == 1.0 and float(eps) == pytest.approx(0.2 * 0.995 ** 100, rel=1e-5)
    assert float(router.schedule(5000, 1.0, 0.3, 0.999)) == pytest.approx(0.3)
    assert float(router.schedule(64, 1.0, 0.3, 0.999)) == pytest.approx(0.999 ** 64, rel=1e-5)
    f = jax.jit(lambda s: router.schedule(s, 0.2, 0.01, 0.9))
    np.testing.assert_allclose([float(f(jnp.int32(s))) for s in (0, 10, 100)], [0.2, 0.2 * 0.9 ** 10, 0.01],
                               rtol=1e-5)
    assert f._cache_size() == 1


def test_priors_and_their_errors():
    s = router.init_state(SPEC, topic_prior={"Regional Knowledge": "ja:6, en:2"},
                          region_prior=json.dumps({"France": "fr:1"}))
    np.testing.assert_allclose(s.A[RK], [math.log(1e-6), math.log(2), math.log(1e-6), math.log(6)], rtol=1e-6)
    np.testing.assert_allclose(s.B[2], [math.log(1e-6), math.log(1e-6), 0.0, math.log(1e-6)], rtol=1e-6)
    assert float(jnp.abs(s.A[GK]).max()) == 0.0
    bad = [({"Regional Knowledge": "xx:1"}, "unknown language 'xx' \\(router.topic_prior\\['Regional Knowledge'\\]\\)"),
           ({"Cooking": "en:1"}, "unknown topic 'Cooking' \\(router.topic_prior\\)"),
           ({"General Knowledge": "ja"}, "router.topic_prior\\['General Knowledge'\\]: mix entry 'ja' is not"),
           ({"General Knowledge": "ja:lots"}, "weight 'lots' of 'ja' is not a number"),
           ("{not json", "router.topic_prior: not a JSON object")]
    for prior, msg in bad:
        with pytest.raises((ValueError, vocab.UnknownKeyError), match=msg):
            router.init_state(SPEC, topic_prior=prior)
    with pytest.raises(vocab.UnknownKeyError, match="unknown region 'Mars' \\(router.region_prior\\)"):
        router.init_state(SPEC, region_prior={"Mars": "en:1"})


def test_encode_errors_name_row_and_field():
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown region 'Atlantis' \(row 12, field extra_info.region\)"):
        SPEC.encode(["General Knowledge", "General Knowledge"], [[], ["Atlantis"]], ["de", "de"], first_row=11)
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown topic 'Cooking' \(row 0, field ability\)"):
        SPEC.encode(["Cooking"], [None], ["de"])
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown language 'klingon' \(row 0, field extra_info.language\)"):
        SPEC.encode(["Translation"], [None], ["klingon"])
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown language 'zh' \(row 0, field extra_info.language\)"):
        SPEC.encode(["Translation"], [None], ["chinese"])  # a real language, but not an arm here
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown topic 'Poetry' \(router.regional_topics\)"):
        router.RouterSpec(LANGS, TOPICS, REGIONS, regional_topics=("Poetry",))
    # Not a name at all (a parquet list cell, a NaN): still an error naming the row and field.
    with pytest.raises(vocab.UnknownKeyError, match=r"a topic must be one name, got list \['General Knowledge'\] "
                                                    r"\(row 0, field ability\)"):
        SPEC.encode([["General Knowledge"]], [None], ["de"])
    with pytest.raises(vocab.UnknownKeyError, match=r"a region must be a name, a list of names or None, got nan "
                                                    r"\(row 0, field extra_info.region\)"):
        SPEC.encode(["General Knowledge"], [float("nan")], ["de"])
    assert ["General Knowledge"] not in TOPICS and np.array(["Japan"]) not in REGIONS
    # Vocabularies name their config key.
    with pytest.raises(ValueError, match=r"language vocabulary \(config.router.languages\) has duplicates: \['zh'\]"):
        vocab.language_vocab(("zh", "chinese"), "config.router.languages")
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown language 'xx' \(config.router.languages\)"):
        vocab.language_vocab(("de", "xx"), "config.router.languages")


def test_jsonl_log_and_heatmaps(tmp_path):
    s = router.init_state(SPEC, topic_prior={"General Knowledge": "fr:3,de:1"})
    s = s.replace(A=s.A.at[RK, JA].set(1.0), B=s.B.at[0, EN].set(2.0), step=jnp.int32(7))
    log = router_log.RouterLog(tmp_path / "sub" / "router.jsonl", SPEC)
    log.write(s, tau=0.5, eps=0.2)
    log.write(s.replace(step=jnp.int32(8)), tau=0.5, eps=0.2)
    recs = router_log.read_log(tmp_path / "sub" / "router.jsonl")
    assert [r["step"] for r in recs] == [7, 8]
    # the trainer passes its own step, which keeps counting when the router does not learn
    assert log.write(s, tau=0.5, eps=0.2, step=3)["step"] == 3
    probs = recs[0]["probs"]
    assert list(probs) == [f"topic:{t}" for t in TOPICS.names] + [f"region:{g}" for g in REGIONS.names]
    gk = probs["topic:General Knowledge"]
    assert gk["softmax"]["fr"] == pytest.approx(0.9, abs=1e-5)  # (3, 1) at tau 0.5 -> (9, 1) / 10
    assert gk["effective"]["fr"] == pytest.approx(0.8 * 0.9 + 0.05, abs=1e-5)
    japan = probs["region:Japan"]["softmax"]  # B alone: A[RK] does not enter region rows
    assert japan["en"] == pytest.approx(math.exp(4) / (math.exp(4) + 3), abs=1e-5)
    assert japan["ja"] == japan["de"]
    assert set(router_log.log_record(SPEC, s, 1.0, 0.0, max_keys=1)["probs"]) == {"topic:Regional Knowledge",
                                                                                  "region:Japan"}
    maps = router_log.heatmaps(SPEC, s, tau=0.5, eps=0.0)
    m, rows, cols = maps["router/routing/Regional Knowledge"]
    assert rows == REGIONS.names and cols == LANGS.names
    np.testing.assert_allclose(m[0], _softmax(np.array([0.0, 2.0, 0.0, 1.0]) / 0.5), rtol=1e-6)
    np.testing.assert_allclose(maps["router/topic_x_language"][0].sum(-1), 1.0, rtol=1e-6)
    assert maps["router/region_x_language"][0].shape == (3, 4)
    np.testing.assert_allclose(maps["router/region_x_language"][0].sum(-1), 1.0, rtol=1e-6)
    assert all(k.startswith("router/") and not k.startswith("router/router") for k in maps)


def test_min_count_ignores_thin_cells():
    """min_count=2: the fr cell (one rollout, reward 1.0) neither enters the zscore of its (topic,
    region) cell nor moves A; de and en (two rollouts each) give z = -1 and +1."""
    rows = [("General Knowledge", (), DE, 0.2)] * 2 + [("General Knowledge", (), EN, 0.6)] * 2 + \
           [("General Knowledge", (), FR, 1.0)]
    state = _observe_rows(router.init_state(SPEC), rows)
    x, observed = router.cell_values(state, "zscore", min_count=2)
    assert not bool(observed[GK, 3, FR])
    np.testing.assert_allclose(np.asarray(x[GK, 3]), [-0.2 / (0.2 + 1e-6), 0.2 / (0.2 + 1e-6), 0, 0], atol=1e-6)
    new = router.update(state, 0.5, "zscore", MASK, min_count=2)
    np.testing.assert_allclose(np.asarray(new.A[GK]), [-0.5, 0.5, 0.0, 0.0], atol=1e-5)
    ref = router.update(state, 0.5, "zscore", MASK)  # min_count 1 (reference): fr gets z = 1.39
    assert float(ref.A[GK, FR]) > 0.6
