"""Router formulas vs a plain-Python restatement of the reference (lrpo_reference.md §1)."""
import json
import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax import router, vocab

LANGS = vocab.language_vocab(("de", "en", "fr", "ja"))
TOPICS = vocab.topic_vocab(("Regional Knowledge", "General Knowledge", "Translation"))
REGIONS = vocab.region_vocab(("Japan", "Europe", "France"))
SPEC = router.RouterSpec(LANGS, TOPICS, REGIONS)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    s = router.init_state(SPEC)
    return s.replace(A=jnp.asarray(rng.normal(size=s.A.shape).astype(np.float32)),
                     B=jnp.asarray(rng.normal(size=s.B.shape).astype(np.float32)))


def test_assign_matches_softmax_and_epsilon_mixing():
    state = _state()
    topic = jnp.array([0, 1])
    regions = jnp.array([[1, 0, 1], [1, 0, 0]], jnp.float32)  # the region is ignored for the non-regional topic
    z = np.stack([np.asarray(state.A[0] + state.B[0] + state.B[2]), np.asarray(state.A[1])])
    for tau, eps in ((1.0, 0.0), (0.5, 0.3)):
        p = np.exp(z / tau) / np.exp(z / tau).sum(-1, keepdims=True)
        want = (1 - eps) * p + eps / 4
        langs = router.assign(state, topic, regions, jnp.array([0, 0]), jnp.array([False, False]),
                              jax.random.key(1), K=20000, K_on=0, tau=jnp.float32(tau), eps=jnp.float32(eps),
                              regional_mask=SPEC.regional_mask)
        freq = np.stack([np.bincount(np.asarray(langs[i]), minlength=4) / 20000 for i in range(2)])
        np.testing.assert_allclose(freq, want, atol=0.015)
        _, eff = router.probabilities(state, topic, regions, SPEC.regional_mask, tau, eps)
        np.testing.assert_allclose(eff, want, rtol=1e-5)


def test_assign_quota_fixed_rows_and_determinism():
    state = _state()
    enc = SPEC.encode(["General Knowledge", "Translation"], [[], ["Japan"]], ["ja", "fr"])
    args = (state, enc["topic"], enc["regions"], enc["orig_lang"], enc["fixed"])
    kw = dict(K=8, K_on=2, tau=jnp.float32(1.0), eps=jnp.float32(0.2), regional_mask=SPEC.regional_mask)
    a = router.assign(*args, jax.random.key(0), **kw)
    b = jax.jit(router.assign, static_argnames=("K", "K_on"))(*args, jax.random.key(0), **kw)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a[0, :2]) == LANGS.index("ja")).all()
    assert (np.asarray(a[1]) == LANGS.index("fr")).all()  # Translation: every rollout fixed
    assert not np.array_equal(a, router.assign(*args, jax.random.key(1), **kw))
    with pytest.raises(ValueError, match="K_on=9 must be within"):
        router.assign(*args, jax.random.key(0), **dict(kw, K_on=9))


def test_fixed_mix_baseline():
    state = router.init_state(SPEC)
    probs = np.array([0, 0.25, 0, 0, 0.75], np.float32)  # 25% English, 75% the question's language
    langs = router.assign(state, jnp.zeros(2, jnp.int32), jnp.zeros((2, 3)), jnp.array([0, 3]),
                          jnp.array([False, False]), jax.random.key(0), K=4000, K_on=0, tau=1.0, eps=0.0,
                          regional_mask=SPEC.regional_mask, fixed_probs=probs)
    for row, own in ((0, 0), (1, 3)):
        counts = np.bincount(np.asarray(langs[row]), minlength=4) / 4000
        assert abs(counts[own] - 0.75) < 0.03 and abs(counts[1] - 0.25) < 0.03


def reference_update(A, B, buffer, alpha, norm, regional_topics):
    """The reference's _update_lang_policy aggregation + LangBanditPolicy.update (dict insertion
    order), restated in plain Python. buffer: list of (topic, regions tuple, lang, reward)."""
    cells = OrderedDict()
    for topic, regions, lang, reward in buffer:
        for rg in (regions or ("None",)):
            s = cells.setdefault((topic, rg, lang), [0.0, 0])
            s[0] += reward
            s[1] += 1
    means = {k: v[0] / v[1] for k, v in cells.items()}
    by_tg = {}
    for (t, g, l), m in means.items():
        by_tg.setdefault((t, g), {})[l] = m
    for (t, g, l), m in means.items():
        vals = list(by_tg[(t, g)].values())
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        x = m if norm == "none" else m - mu if norm == "center" else (m - mu) / (sd + 1e-6)
        A[t][l] = (1 - alpha) * A[t][l] + alpha * x
        if t in regional_topics and g != "None":
            B[g][l] = (1 - alpha) * B[g][l] + alpha * x
    return A, B


def _random_buffer(rng, n=60, max_regions=2):
    buf = []
    for _ in range(n):
        t = rng.integers(0, 2)
        regs = tuple(sorted({REGIONS.names[i] for i in rng.integers(0, 3, rng.integers(0, max_regions + 1))}))
        buf.append((TOPICS.names[t], regs, LANGS.names[rng.integers(0, 4)], float(rng.random())))
    return buf


def _observe_all(state, buf):
    enc = SPEC.encode([b[0] for b in buf], [b[1] for b in buf], [b[2] for b in buf])
    return router.observe(state, enc["topic"], enc["regions"], enc["orig_lang"],
                          jnp.asarray([b[3] for b in buf]), jnp.ones(len(buf)))


@pytest.mark.parametrize("norm", router.NORMS)
def test_reference_compat_matches_reference_algorithm(norm):
    rng = np.random.default_rng(1)
    # At most one region per rollout, sorted by region index: the reference's dict insertion order
    # of (topic, region, language) cells then equals our region-index order.
    buf = sorted(_random_buffer(rng, max_regions=1), key=lambda b: (b[0] != "Regional Knowledge",
                                                     REGIONS.index(b[1][0]) if b[1] else 99))
    A = {t: {l: 0.0 for l in LANGS.names} for t in TOPICS.names}
    B = {g: {l: 0.0 for l in LANGS.names} for g in REGIONS.names}
    A, B = reference_update(A, B, buf, 0.1, norm, {"Regional Knowledge"})
    state = router.update(_observe_all(router.init_state(SPEC), buf), 0.1, norm, SPEC.regional_mask,
                          reference_compat=True)
    want_a = np.array([[A[t][l] for l in LANGS.names] for t in TOPICS.names])
    want_b = np.array([[B[g][l] for l in LANGS.names] for g in REGIONS.names])
    np.testing.assert_allclose(state.A, want_a, atol=1e-5)
    np.testing.assert_allclose(state.B, want_b, atol=1e-5)
    assert float(state.counts.sum()) == 0.0 and int(state.updates) == 1


@pytest.mark.parametrize("norm", router.NORMS)
def test_default_update_is_one_count_weighted_ema(norm):
    rng = np.random.default_rng(2)
    buf = _random_buffer(rng)
    state = _observe_all(router.init_state(SPEC), buf)
    x, observed = (np.asarray(a) for a in router.normalized_cell_values(state, norm))
    counts = np.asarray(state.counts)
    new = router.update(state, 0.1, norm, SPEC.regional_mask)
    for t in range(3):
        for l in range(4):
            w = counts[t, :, l]
            want = 0.1 * (w * x[t, :, l]).sum() / w.sum() if w.sum() else 0.0
            assert float(new.A[t, l]) == pytest.approx(want, abs=1e-6)
    for g in range(3):
        for l in range(4):
            w = counts[0, g, l]  # topic 0 is the only regional one
            assert float(new.B[g, l]) == pytest.approx(0.1 * x[0, g, l] if w else 0.0, abs=1e-6)


def test_compat_and_default_differ_where_the_reference_bug_bites():
    """Regional topic, one language, rewards 1.0 in three region cells: ours moves A by alpha once
    (to 0.1); the reference's three sequential EMAs move it to 1 - 0.9**3 = 0.271."""
    buf = [("Regional Knowledge", (g,), "ja", 1.0) for g in ("Japan", "Europe", "France")]
    state = _observe_all(router.init_state(SPEC), buf)
    ours = router.update(state, 0.1, "none", SPEC.regional_mask)
    ref = router.update(state, 0.1, "none", SPEC.regional_mask, reference_compat=True)
    ja = LANGS.index("ja")
    assert float(ours.A[0, ja]) == pytest.approx(0.1)
    assert float(ref.A[0, ja]) == pytest.approx(1 - 0.9 ** 3)


def test_zscore_single_language_cell_is_zero_and_maybe_update_under_jit():
    state = _observe_all(router.init_state(SPEC), [("General Knowledge", (), "de", 0.9)] * 3)
    x, _ = router.normalized_cell_values(state, "zscore")
    assert float(jnp.abs(x).max()) == 0.0
    step = jax.jit(lambda s: router.maybe_update(s, 5, 0.1, "none", SPEC.regional_mask))
    s = router.init_state(SPEC)
    for i in range(1, 11):
        s = _observe_all(s, [("General Knowledge", (), "de", 1.0)])
        s = step(s)
        assert int(s.updates) == i // 5
        assert float(s.counts.sum()) == (0.0 if i % 5 == 0 else i % 5)


def test_schedules_are_independent():
    # tau held constant (decay 1) must not freeze eps annealing (the reference's early return did).
    assert float(router.schedule(10, 1.0, 1.0, 1.0)) == 1.0
    assert float(router.schedule(10, 0.2, 0.0, 0.995)) == pytest.approx(0.2 * 0.995 ** 10, rel=1e-6)
    assert float(router.schedule(5000, 1.0, 0.3, 0.999)) == pytest.approx(0.3)


def test_priors_errors_and_log_record():
    s = router.init_state(SPEC, topic_prior={"Regional Knowledge": "ja:6,en:2"})
    np.testing.assert_allclose(s.A[0], [math.log(1e-6), math.log(2), math.log(1e-6), math.log(6)], rtol=1e-6)
    with pytest.raises(vocab.UnknownKeyError, match="unknown language 'xx'"):
        router.init_state(SPEC, topic_prior={"Regional Knowledge": "xx:1"})
    with pytest.raises(ValueError, match="not 'code:weight'"):
        router.parse_mix("ja", LANGS, "prior")
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown region 'Atlantis' \(row 1, field region\)"):
        SPEC.encode(["General Knowledge", "General Knowledge"], [[], ["Atlantis"]], ["de", "de"])
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown topic 'Cooking' \(row 0, field topic\)"):
        SPEC.encode(["Cooking"], [[]], ["de"])
    s = s.replace(B=s.B.at[0, 3].set(1.0))
    rec = router.log_record(SPEC, s, tau=1.0, eps=0.2)
    json.dumps(rec)
    assert set(rec["probs"]) == {"topic:Regional Knowledge", "topic:General Knowledge", "topic:Translation",
                                 "region:Japan"}
    row = rec["probs"]["topic:General Knowledge"]
    assert row["softmax"] == {c: 0.25 for c in LANGS.names}
    assert row["effective"]["de"] == pytest.approx(0.8 * 0.25 + 0.05)
