"""External LLM-judge round trip in the reference's four-label format.

The reference grades CARE answers with a SimpleQA-style judge (lrpo_reference.md §5.2): letters
A CORRECT, B CORRECT_BUT_WRONG_LANGUAGE, C INCORRECT, D NOT_ATTEMPTED, and accuracy counts only A.
We write one JSONL request per answer (the filled grader prompt plus the fields it was made of),
the user runs any judge over it, and `import_grades` turns the judge's replies back into the
per-language table. The grader text is ours; only its placeholders and labels follow the reference.
"""
from __future__ import annotations

import collections
import json
import pathlib
import re
from typing import Iterable, Mapping

LABELS = ("CORRECT", "CORRECT_BUT_WRONG_LANGUAGE", "INCORRECT", "NOT_ATTEMPTED")
LETTERS = dict(zip("ABCD", LABELS))

GRADER_PROMPT = """You grade an answer to a question against a gold target answer.

Grades:
A. CORRECT: the predicted answer agrees with the gold target in substance, and it is written in the
   language of the question.
B. CORRECT_BUT_WRONG_LANGUAGE: it agrees with the gold target, but it is written in another language.
C. INCORRECT: it contradicts the gold target, or contains a factual claim that conflicts with it.
D. NOT_ATTEMPTED: it neither gives the gold target's information nor contradicts it (a refusal,
   a question back, or an evasive reply).
Ignore small differences in wording, spelling or extra detail that does not contradict the target.

Question: {question}
Gold target: {target}
Predicted answer: {predicted_answer}

Return only one letter: "A", "B", "C" or "D"."""


def request(record: Mapping) -> dict:
    """One judge request: the grader prompt and the fields that identify the answer."""
    for key in ("id", "language", "question", "target", "predicted_answer"):
        if record.get(key) is None:
            raise ValueError(f"judge request for id={record.get('id')!r} lacks field {key!r}")
    prompt = GRADER_PROMPT.format(question=record["question"], target=record["target"],
                                  predicted_answer=record["predicted_answer"])
    return {**{k: record[k] for k in ("id", "model", "language", "category", "question", "target",
                                      "predicted_answer") if k in record}, "prompt": prompt}


def export_requests(records: Iterable[Mapping], path: str | pathlib.Path) -> int:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(request(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


_LETTER = re.compile(r"^\W*([ABCD])\b")


def parse_grade(text: str, where: str = "grade") -> str:
    """A judge reply -> one of LABELS. Accepts 'A', 'A. CORRECT', '**B**', or a label name."""
    raw = str(text).strip()
    m = _LETTER.match(raw)
    if m:
        return LETTERS[m.group(1)]
    upper = raw.upper().replace(" ", "_")
    for label in sorted(LABELS, key=len, reverse=True):  # CORRECT_BUT_... before CORRECT
        if upper.startswith(label) or upper.strip("*._") == label:
            return label
    raise ValueError(f"{where}: cannot read a grade from {raw[:80]!r}; expected A/B/C/D or one of {LABELS}")


def _read_jsonl(path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not JSON ({e.msg})") from None
    return rows


def import_grades(requests_path: str | pathlib.Path, grades_path: str | pathlib.Path) -> list[dict]:
    """Judge replies (JSONL rows with `id` and `grade`, `output` or `response`) joined to the
    requests -> result records (model, task 'judge', metric, language, value, n).

    Every request needs exactly one grade: missing or unknown ids are an error that lists them.
    """
    requests = _read_jsonl(requests_path)
    key = lambda r: (r.get("model", ""), str(r["id"]))  # noqa: E731
    wanted = {key(r): r for r in requests}
    grades = {}
    for n, row in enumerate(_read_jsonl(grades_path), 1):
        where = f"{grades_path}: line {n}"
        if "id" not in row:
            raise ValueError(f"{where}: no 'id' field")
        reply = next((row[k] for k in ("grade", "output", "response") if k in row), None)
        if reply is None:
            raise ValueError(f"{where} (id={row['id']!r}): no 'grade', 'output' or 'response' field")
        if "model" in row:
            k = key(row)
        else:  # without a model, the id must name one request: with several models it names several
            matches = [w for w in wanted if w[1] == str(row["id"])]
            if len(matches) > 1:
                raise ValueError(f"{where}: id {row['id']!r} was asked of {len(matches)} models "
                                 f"{sorted(m[0] for m in matches)}: give each grade row its request's 'model'")
            k = matches[0] if matches else ("", str(row["id"]))
        if k not in wanted:
            raise ValueError(f"{where}: id {row['id']!r} is not among the exported requests")
        if k in grades:
            raise ValueError(f"{where}: a second grade for id {row['id']!r}" + (f" (model {k[0]!r})" if k[0] else "")
                             + ": give each request exactly one")
        grades[k] = parse_grade(reply, f"{where} (id={row['id']!r})")
    missing = [k for k in wanted if k not in grades]
    if missing:
        raise ValueError(f"{len(missing)} request(s) have no grade, e.g. ids {[m[1] for m in missing[:5]]}")
    counts = collections.defaultdict(collections.Counter)
    for k, label in grades.items():
        req = wanted[k]
        counts[(req.get("model", ""), req["language"])][label] += 1
    out = []
    for (model, lang), c in sorted(counts.items()):
        n = sum(c.values())
        out.append({"model": model, "task": "judge", "metric": "accuracy", "language": lang,
                    "value": c["CORRECT"] / n, "n": n})
        for label in LABELS[1:]:
            out.append({"model": model, "task": "judge", "metric": label.lower(), "language": lang,
                        "value": c[label] / n, "n": n})
    return out
