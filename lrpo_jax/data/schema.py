"""Validated training rows. Problems are reported by row index and field, never defaulted away.

Raw rows follow the verl parquet schema the reference uses (`question`, `answer`, `ability` =
topic, `extra_info.language`, `extra_info.region` as a string or list) or the flat equivalent
(`topic`, `language`, `region(s)`). Languages may be ISO 639-1/639-3 codes or English names; the
reference silently turned anything it could not map into English, we stop with the row and field.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lrpo_jax import vocab as vocab_lib


class DataError(ValueError):
    """A row that cannot be used; the message names the row and field, `field` is the field alone
    (skipped rows are counted by it: parsing it out of a message breaks on paths with ': ')."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str                     # the reference answer (similarity reward target)
    topic: str
    regions: tuple[str, ...]
    language: str                   # ISO 639-1 of the question (and reference answer)
    numeric_answer: float | None = None
    pair_id: str | None = None      # same id across languages = parallel items
    source: str = ""


def _field(row: Mapping[str, Any], *names: str):
    """First present value among dotted names (e.g. 'extra_info.language')."""
    for name in names:
        cur: Any = row
        for part in name.split("."):
            if isinstance(cur, Mapping) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur, name
    return None, names[0]


def _regions(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return () if value.strip() in ("", "None", "[]") else (value.strip(),)
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    raise TypeError(f"expected a string or a list, got {type(value).__name__}")


def parse_row(row: Mapping[str, Any], index: int, *, languages: vocab_lib.Vocab, topics: vocab_lib.Vocab,
              regions: vocab_lib.Vocab, default_topic: str | None = None, where: str = "row") -> Example:
    """One raw row -> Example, raising DataError naming `where index` and the field."""
    def fail(field, msg):
        raise DataError(f"{where} {index}, field {field}: {msg}", field)

    if not isinstance(row, Mapping):  # e.g. a JSONL line `42`: not "missing question"
        raise DataError(f"{where} {index}: not an object but {type(row).__name__} {str(row)[:60]!r}", "row")
    question, qf = _field(row, "question", "extra_info.question")
    if not isinstance(question, str) or not question.strip():
        fail(qf, f"missing or empty question ({question!r})")
    answer, af = _field(row, "answer", "reward_model.ground_truth")
    if not isinstance(answer, str) or not answer.strip():
        fail(af, f"missing or empty reference answer ({answer!r})")
    lang, lf = _field(row, "extra_info.language", "language")
    try:
        code = vocab_lib.normalize_language(lang) if lang is not None else None
    except vocab_lib.UnknownKeyError as e:
        fail(lf, str(e))
    if code is None:
        fail(lf, "missing language")
    if code not in languages:
        fail(lf, f"language {code!r} is not among the configured languages {list(languages.names)}")
    topic, tf = _field(row, "ability", "topic", "extra_info.topic")
    topic = topic if topic is not None else default_topic
    if isinstance(topic, (list, tuple, np.ndarray)):  # parquet list columns; the reference sums A
        if len(topic) != 1:                           # over several topics: one per example here
            fail(tf, f"{len(topic)} topics {list(topic)!r}; an example has exactly one topic")
        topic = str(topic[0])
    if topic not in topics:
        fail(tf, f"unknown topic {topic!r}; configured topics: {list(topics.names)}")
    region_value, rf = _field(row, "extra_info.region", "region", "regions")
    try:
        regs = _regions(region_value)
    except TypeError as e:
        fail(rf, str(e))
    for g in regs:
        if g not in regions:
            fail(rf, f"unknown region {g!r}; configured regions: {list(regions.names)}")
    raw, nf = _field(row, "numeric_answer", "extra_info.numeric_answer")
    numeric = None
    if raw is not None:
        try:
            numeric = float(raw)
        except (TypeError, ValueError):
            fail(nf, f"not a number: {raw!r}")
        if not math.isfinite(numeric):  # "nan" parses, but no response can equal it: the row never scores
            fail(nf, f"not a finite number: {raw!r}")
    rid, _ = _field(row, "id", "extra_info.index", "uid")
    pair, _ = _field(row, "pair_id", "extra_info.pair_id")
    source, _ = _field(row, "source", "data_source")
    return Example(id=str(rid if rid is not None else f"{where}-{index}"), question=question.strip(),
                   answer=answer.strip(), topic=topic, regions=regs, language=code, numeric_answer=numeric,
                   pair_id=None if pair is None else str(pair), source=str(source or ""))


def validate_rows(rows: Iterable[Mapping[str, Any]], *, languages: vocab_lib.Vocab, topics: vocab_lib.Vocab,
                  regions: vocab_lib.Vocab, skip_bad_rows: bool = False, default_topic: str | None = None,
                  where: str = "row", numbers: Sequence[int] | None = None
                  ) -> tuple[list[Example], collections.Counter]:
    """Parses every row. With skip_bad_rows, bad rows are dropped and counted by field; otherwise
    the first bad row raises DataError. Errors name `where n`, n the row's index or its entry in
    `numbers` (e.g. a JSONL file's 1-based line numbers, with where="<path>: line")."""
    out, skipped = [], collections.Counter()
    first_row: dict[str, int] = {}  # id -> row: ids key the reward's reference cache, so they must be unique
    for i, row in enumerate(rows):
        n = numbers[i] if numbers is not None else i
        try:
            ex = parse_row(row, n, languages=languages, topics=topics, regions=regions,
                           default_topic=default_topic, where=where)
            if ex.id in first_row:
                raise DataError(f"{where} {n}, field id: duplicate id {ex.id!r} (first used by {where} "
                                f"{first_row[ex.id]}); each example needs its own id", "id")
            first_row[ex.id] = n
            out.append(ex)
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped[e.field] += 1
    if not out:
        raise DataError(f"no usable rows ({where} ...): {sum(skipped.values())} skipped, by field {dict(skipped)}")
    return out, skipped


def to_row(ex: Example) -> dict:
    """Example -> the verl-style raw row (for writing parquet/JSONL)."""
    return {"question": ex.question, "answer": ex.answer, "ability": ex.topic, "data_source": ex.source,
            "extra_info": {"language": ex.language, "region": list(ex.regions), "index": ex.id,
                           "pair_id": ex.pair_id, "numeric_answer": ex.numeric_answer}}
