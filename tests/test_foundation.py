import jax
import pytest

from lrpo_jax import config_lib, vocab


def test_eight_fake_devices():
    assert jax.device_count() == 8


def test_vocab_index_and_error_names_key():
    langs = vocab.language_vocab()
    assert langs.names == vocab.DEFAULT_LANGUAGES and langs.index("zh") == 14
    with pytest.raises(vocab.UnknownKeyError, match=r"unknown language 'xx' \(row 3, field extra_info.language\)"):
        langs.index("xx", "row 3, field extra_info.language")
    assert len(vocab.topic_vocab()) == 6 and len(vocab.region_vocab()) == 24


@pytest.mark.parametrize("raw,code", [("zh", "zh"), ("Chinese", "zh"), ("chinese", "zh"), ("zho", "zh"),
                                      ("pt-BR", "pt"), ("SWH", "sw")])
def test_normalize_language(raw, code):
    assert vocab.normalize_language(raw) == code


@pytest.mark.parametrize("raw", ["", None, "klingon", "Zh-Hant-XX-YY"])
def test_normalize_language_never_defaults_to_english(raw):
    if raw == "Zh-Hant-XX-YY":  # base code still resolves
        assert vocab.normalize_language(raw) == "zh"
        return
    with pytest.raises(vocab.UnknownKeyError):
        vocab.normalize_language(raw, "row 7")


def test_parse_arg():
    c = config_lib.parse_arg("steps=5,runlocal,variant=grpo", steps=10, runlocal=False, variant="lrpo", lr=1e-6)
    assert (c.steps, c.runlocal, c.variant, c.lr) == (5, True, "grpo", 1e-6)
    with pytest.raises(KeyError, match="unknown config argument 'stepz'"):
        config_lib.parse_arg("stepz=1", steps=10)
    assert config_lib.parse_arg("lr=1", lr=1e-6).lr == 1.0 and isinstance(config_lib.parse_arg("lr=1", lr=1e-6).lr, float)
    for arg, msg in (("steps=True", "expects a number"), ("steps=2.5", "expects an integer"), ("steps=x", "expects a number")):
        with pytest.raises(ValueError, match=f"config argument 'steps' {msg}, got"):
            config_lib.parse_arg(arg, steps=10)
