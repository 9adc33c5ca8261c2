"""Language-ID gate: normalisation rules, gating semantics, and accuracy on real MGSM text."""
import csv

import numpy as np
import pytest

from lrpo_jax import vocab
from lrpo_jax.rewards import lid

MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


@pytest.fixture(scope="module")
def model():
    return lid.LanguageID(vocab.DEFAULT_LANGUAGES + ("bn", "sw", "te", "th"))


def test_normalisation_like_the_reference():
    assert lid.normalize("  Hallo \n\n  Welt\t! ") == "Hallo Welt !"
    assert lid.normalize("Voici:\n```python\nprint('x')\n```\net voilà ```a``` fin") == "Voici: et voilà fin"
    assert lid.normalize("   ") is None
    assert lid.normalize("```\ncode only\n```") is None
    assert lid.normalize("!!! ??? ... --- ... !!! 1") is None  # < 5% alphanumeric


def test_gate_semantics_and_reasons(model):
    texts = ["Die Katze sitzt auf der Matte und schläft.", "The cat sits on the mat and sleeps.", "",
             "```\nx = 1\n```", "猫がマットの上で寝ています。"]
    targets = ["de", "de", "de", "fr", "ja"]
    values, codes, reasons = model.gate(texts, targets)
    np.testing.assert_array_equal(values, [1, 0, 0, 0, 1])
    assert codes[0] == "de" and codes[1] == "en" and codes[2] is None
    assert reasons == {"match": 2, "other_language": 1, "empty": 1, "no_text": 1}
    soft, _, _ = model.gate(texts, targets, mode="soft")
    assert 0.5 < soft[0] <= 1 and 0 < soft[1] < 0.2 and soft[2] == 0
    thr = soft[0] / 2  # the threshold applies to the soft gate too
    np.testing.assert_array_equal(model.gate(texts, targets, mode="soft", threshold=thr)[0],
                                  np.where(soft >= thr, soft, 0.0))
    strict, _, reasons = model.gate(["Ja"], ["de"], threshold=0.99)
    assert strict[0] == 0 and reasons["below_threshold"] == 1
    with pytest.raises(ValueError, match="target language 'xx'"):
        model.gate(["hi"], ["xx"])
    with pytest.raises(ValueError, match="reward.gate='maybe'"):
        model.gate(["hi"], ["de"], mode="maybe")


def test_unknown_configured_language_fails_at_start_up():
    with pytest.raises(ValueError, match=r"configured languages \['tlh'\] cannot be recognised"):
        lid.LanguageID(("de", "tlh"))


def test_every_lid176_label_is_known_and_restrict_never_runs_out():
    """lid.176 has 176 labels; fastText's threshold 0 prunes those below ~1e-5 from a prediction, which
    hid 8 of them (Uyghur, Cantonese, ...) from the start-up check and could leave `restrict` with no
    configured language to pick."""
    ug = lid.LanguageID(("ug", "yue"))
    assert len(ug.known) == 176
    restricted = lid.LanguageID(("de", "fr"), restrict=True)
    codes, probs, _ = restricted.predict(["这是一个中文句子，讲的是猫坐在垫子上。"])
    assert codes[0] in ("de", "fr") and 0 <= probs[0] < 1e-3


def _mgsm_accuracy(model, mgsm_dir):
    accuracy = {}
    for lang in MGSM_LANGS:
        with open(mgsm_dir / f"mgsm_{lang}.tsv", encoding="utf-8") as f:
            questions = [row[0] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        codes, _, _ = model.predict(questions)
        accuracy[lang] = float(np.mean([c == lang for c in codes]))
    return accuracy


def test_accuracy_on_mgsm_questions(model, mgsm_dir):
    """lid.176 (.ftz) on the 250 MGSM questions per language (all 11 are lid.176 languages).

    Measured: 1.0 everywhere except fr 0.996, zh 0.996 and sw 0.94 (short Swahili word problems read
    as Esperanto); restricted to the configured languages, sw reaches 0.98 and all are >= 0.95.
    """
    free = _mgsm_accuracy(model, mgsm_dir)
    print("lid.176 accuracy on MGSM, unrestricted:", free)
    assert all(acc >= 0.95 for lang, acc in free.items() if lang != "sw"), free
    assert free["sw"] >= 0.9, free
    restricted = _mgsm_accuracy(lid.LanguageID(model.languages, restrict=True), mgsm_dir)
    print("lid.176 accuracy on MGSM, restricted to configured languages:", restricted)
    assert min(restricted.values()) >= 0.95, restricted
