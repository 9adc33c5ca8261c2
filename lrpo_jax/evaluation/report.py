"""Result tables: long-format records -> JSON, CSV, markdown and a bar chart.

A record is `{model, task, metric, language, value, n}`. Markdown holds one table per
(task, metric) with languages as rows and models as columns (plus a mean row), so one call over
several checkpoints gives the comparison directly; a summary table lists every model's mean per
task metric. The PNG shows each task's headline metric per language, one bar per model.
"""
from __future__ import annotations

import collections
import csv
import json
import pathlib
from typing import Sequence

FIELDS = ("model", "task", "metric", "language", "value", "n")
HEADLINE = {"math": "accuracy", "reference": "calibrated_similarity", "mc": "accuracy", "judge": "accuracy"}


def _ordered(values):
    return list(dict.fromkeys(values))


def pivot(records: Sequence[dict]):
    """{(task, metric): {language: {model: (value, n)}}} plus model order."""
    table = collections.defaultdict(lambda: collections.defaultdict(dict))
    for r in records:
        table[(r["task"], r["metric"])][r["language"]][r["model"]] = (float(r["value"]), int(r["n"]))
    return table, _ordered(r["model"] for r in records)


def means(records: Sequence[dict]) -> dict:
    """{(model, task, metric): unweighted mean over languages} (the usual multilingual average)."""
    acc = collections.defaultdict(list)
    for r in records:
        acc[(r["model"], r["task"], r["metric"])].append(float(r["value"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def markdown(records: Sequence[dict]) -> str:
    table, models = pivot(records)
    avg = means(records)
    lines = ["## Summary (mean over languages)", "",
             "| model | " + " | ".join(f"{t} {m}" for t, m in table) + " |",
             "|---|" + "---|" * len(table)]
    for model in models:
        cells = [f"{avg[(model, t, m)]:.3f}" if (model, t, m) in avg else "-" for t, m in table]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for (task, metric), rows in table.items():
        lines += ["", f"## {task}: {metric}", "", "| language | " + " | ".join(models) + " | n |",
                  "|---|" + "---|" * (len(models) + 1)]
        for lang in sorted(rows):
            cells = [f"{rows[lang][m][0]:.3f}" if m in rows[lang] else "-" for m in models]
            n = max(v[1] for v in rows[lang].values())
            lines.append(f"| {lang} | " + " | ".join(cells) + f" | {n} |")
        lines.append("| **mean** | " + " | ".join(
            f"{avg[(m, task, metric)]:.3f}" if (m, task, metric) in avg else "-" for m in models) + " | |")
    return "\n".join(lines) + "\n"


def bar_chart(records: Sequence[dict], path: str | pathlib.Path) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table, models = pivot(records)
    panels = [(t, m) for (t, m) in table if HEADLINE.get(t) == m] or list(table)[:1]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, (task, metric) in zip(axes[:, 0], panels):
        langs = sorted(table[(task, metric)])
        x = np.arange(len(langs))
        for i, model in enumerate(models):
            vals = [table[(task, metric)][lang].get(model, (np.nan, 0))[0] for lang in langs]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=model)
        ax.set_xticks(x, langs)
        ax.set_title(f"{task}: {metric}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(records: Sequence[dict], out_dir: str | pathlib.Path, name: str = "results") -> dict[str, pathlib.Path]:
    """Writes `<name>.json`, `.csv`, `.md` and `.png` under `out_dir`; returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps(list(records), indent=1, ensure_ascii=False))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    paths["md"].write_text(markdown(records))
    bar_chart(records, paths["png"])
    return paths
