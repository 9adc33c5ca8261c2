"""Builds per-language-pair calibration tables from parallel data, offline.

    python -m lrpo_jax.calibrate --config configs/calibrate.py --workdir runs/calib
    python -m lrpo_jax.calibrate --config configs/calibrate.py:source=mgsm,path=../shared/data/mgsm,field=question,langs=de+en+fr+ja+ru+zh --workdir W

For every ordered (reference language a, response language b) the builder embeds the reference
answers of parallel items and collects three kinds of similarity samples (the paper's §5.4 recipe;
the reference never released its builder):
* equivalent:    the same item's answer in a and in b;
* mismatched:    `mismatches` random other items;
* hard negative: the `hard_negatives` most similar other items.
A same-language pair (a, a) needs two different texts of one item in language a. Data rows that
repeat an item's pair_id and language are its paraphrases (the first row is the item's text, the
next one its paraphrase). `same_language` says what to do:
* "paraphrase": equivalents are (text, paraphrase) pairs; a language without paraphrases has no
  (a, a) statistics (absent: `reward.missing_pair` handles it);
* "absent": no same-language statistics;
* "identity": the text compared with itself (similarity 1.0), the only option with one text per
  item and language, as in the shipped data: mean calibration then shifts own-language rewards by
  mu_ref - 1 (-0.064 on the cached e5 table, where cross-language pairs gain +0.006 to +0.033), and
  quantile calibration penalises them more (at cosine 0.95: de->de 0.87, de->en 1.0). The
  reference's own-language penalty was -0.03 to -0.04. The diagnostic does not count identical
  pairs: they measure nothing.
Texts are the items' answers (or questions: `text_field`, for data whose answers are bare numbers
such as MGSM). Embeddings are cached per language in the workdir (`emb_<field>_<lang>.npz`), so an interrupted build resumes
without re-embedding. A diagnostic (JSON + PNG) fits the table on half of the items and measures on
the other half how much calibration shrinks the across-pair spread of equivalent-pair means, and
that it keeps each pair's equivalent-vs-mismatched separation (AUC).
"""
from __future__ import annotations

import collections
import hashlib
import json
import pathlib
from typing import Sequence

import numpy as np

from lrpo_jax.data.schema import Example
from lrpo_jax.rewards import calibration as calib_lib


def parallel_items(examples: Sequence[Example], languages: Sequence[str]) -> dict[str, dict[str, Example]]:
    """pair_id -> {language: example} (an item's first row per language), keeping items present in
    at least two of `languages`."""
    items: dict[str, dict[str, Example]] = collections.defaultdict(dict)
    for ex in examples:
        if ex.pair_id and ex.language in languages:
            items[ex.pair_id].setdefault(ex.language, ex)
    return {k: v for k, v in sorted(items.items()) if len(v) >= 2}


def require_parallel_items(items: dict, examples: Sequence[Example], languages: Sequence[str]) -> None:
    """Stops before anything is embedded or written when no item is parallel (an empty table would
    only fail later, in the diagnostic, with a misleading "too few items")."""
    if not items:
        with_id = sum(1 for ex in examples if ex.pair_id and ex.language in languages)
        raise ValueError(f"no parallel items (shared pair_id) for languages {list(languages)}: {with_id} of "
                         f"{len(examples)} rows have a pair_id, and no pair_id occurs in two of these languages")


def paraphrase_items(examples: Sequence[Example], languages: Sequence[str],
                     field: str = "answer") -> dict[str, dict[str, Example]]:
    """pair_id -> {language: example}: an item's second row in a language whose `field` text differs
    from the first row's (its paraphrase, for same-language equivalents)."""
    first: dict[tuple[str, str], Example] = {}
    para: dict[str, dict[str, Example]] = collections.defaultdict(dict)
    for ex in examples:
        if not ex.pair_id or ex.language not in languages:
            continue
        key = (ex.pair_id, ex.language)
        if key not in first:
            first[key] = ex
        elif getattr(ex, field) != getattr(first[key], field):
            para[ex.pair_id].setdefault(ex.language, ex)
    return dict(sorted(para.items()))


def embed_answers(model, items: dict, languages: Sequence[str], cache_dir: pathlib.Path | None = None,
                  progress: bool = True, field: str = "answer", model_key: str = "",
                  name: str = "emb") -> dict[str, tuple[list[str], np.ndarray]]:
    """language -> (pair ids, embeddings [n, D]) of each item's `field` text, cached per language.

    `model_key` names the encoder set-up (encoder, pooling, max length): a cached file made with
    another one, or from other texts under the same ids, is re-embedded, not reused."""
    if field not in TEXT_FIELDS:
        raise ValueError(f"text field {field!r}; expected 'answer' or 'question'")
    texts = [getattr(per[lang], field) for per in items.values() for lang in per]
    bare = sum(_is_number(t) for t in texts)
    if texts and bare > len(texts) // 2:
        raise ValueError(f"{bare} of {len(texts)} {field} texts are bare numbers (e.g. MGSM answers): their "
                         f"embeddings do not depend on the language; build from field='question' instead")
    out = {}
    langs = list(languages)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(langs), desc="embedding answers", unit="lang")
    for lang in langs:
        ids = [pid for pid, per in items.items() if lang in per]
        lang_texts = [getattr(items[pid][lang], field) for pid in ids]
        # The texts' digest too: data fixed in place keeps its ids, and must not keep old vectors.
        digest = hashlib.sha256("\0".join(lang_texts).encode("utf-8")).hexdigest()
        cached = cache_dir / f"{name}_{field}_{lang}.npz" if cache_dir else None
        if cached and cached.exists():
            with np.load(cached, allow_pickle=False) as f:
                same_model = str(f["model"]) == model_key if "model" in f.files else not model_key
                same_texts = "texts" in f.files and str(f["texts"]) == digest
                if list(f["ids"]) == ids and same_model and same_texts:
                    out[lang] = (ids, f["emb"])
        if lang not in out:
            emb = model.embed(lang_texts) if ids else np.zeros((0, 1), np.float32)
            if cached:
                tmp = cached.with_name(cached.stem + ".tmp.npz")
                np.savez(tmp, ids=np.array(ids), emb=emb, model=np.array(model_key), texts=np.array(digest))
                tmp.replace(cached)
            out[lang] = (ids, emb)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return out


def _is_number(text: str) -> bool:
    try:
        float(str(text).replace(",", "").strip())
        return True
    except ValueError:
        return False


SAME_LANGUAGE = ("identity", "absent", "paraphrase")
TEXT_FIELDS = ("answer", "question")


def similarity_samples(embeddings: dict, languages: Sequence[str], *, mismatches: int = 4, hard_negatives: int = 2,
                       seed: int = 0, subset: set[str] | None = None, same_language: str = "identity",
                       paraphrases: dict | None = None):
    """Labelled samples (ref_lang, resp_lang, kind, sim) for every ordered pair of `languages`
    (same-language pairs per `same_language`, with `paraphrases` in embed_answers' format; see the
    module docstring)."""
    if same_language not in SAME_LANGUAGE:
        raise ValueError(f"same_language={same_language!r}; expected one of {SAME_LANGUAGE}")
    if same_language == "paraphrase" and paraphrases is None:
        raise ValueError("same_language='paraphrase' needs the paraphrase embeddings")
    rng = np.random.default_rng(seed)
    ref, resp, kind, sims = [], [], [], []
    for a_i, a in enumerate(languages):
        ids_a, emb_a = embeddings[a]
        for b_i, b in enumerate(languages):
            if a == b and same_language == "absent":
                continue
            ids_b, emb_b = embeddings[b]
            common = [p for p in ids_a if p in set(ids_b) and (subset is None or p in subset)]
            if len(common) < 3:
                continue
            if a == b and same_language == "paraphrase":
                ids_p, emb_p = paraphrases.get(a, ([], None))
                common = [p for p in common if p in set(ids_p)]
                if len(common) < 3:
                    continue
            ia = np.array([ids_a.index(p) for p in common])
            ib = np.array([ids_b.index(p) for p in common])
            s = emb_a[ia] @ emb_b[ib].T  # [n, n], diagonal = equivalent
            if a == b and same_language == "paraphrase":  # the diagonal: each text vs its paraphrase
                s[np.arange(len(common)), np.arange(len(common))] = np.einsum(
                    "nd,nd->n", emb_a[ia], emb_p[np.array([ids_p.index(p) for p in common])])
            n = len(common)
            for i in range(n):
                others = np.delete(np.arange(n), i)
                rand = rng.choice(others, size=min(mismatches, n - 1), replace=False)
                hard = others[np.argsort(-s[i, others])[:hard_negatives]]
                for j, k in [(i, 0)] + [(j, 1) for j in rand] + [(j, 2) for j in hard]:
                    ref.append(a_i)
                    resp.append(b_i)
                    kind.append(k)
                    sims.append(s[i, j])
    return np.array(ref), np.array(resp), np.array(kind), np.array(sims, np.float32)


def build_table(model, examples: Sequence[Example], languages: Sequence[str], *, cache_dir=None,
                mismatches: int = 4, hard_negatives: int = 2, num_levels: int = 101, seed: int = 0,
                provenance: dict | None = None, progress: bool = True,
                same_language: str = "identity") -> calib_lib.CalibrationTable:
    items = parallel_items(examples, languages)
    require_parallel_items(items, examples, languages)
    emb = embed_answers(model, items, languages, cache_dir, progress)
    para = (embed_answers(model, paraphrase_items(examples, languages), languages, cache_dir, progress, name="para")
            if same_language == "paraphrase" else None)
    samples = similarity_samples(emb, languages, mismatches=mismatches, hard_negatives=hard_negatives, seed=seed,
                                 same_language=same_language, paraphrases=para)
    prov = {"items": len(items), "same_language": same_language, **(provenance or {})}
    if para is not None:
        prov["paraphrases"] = {lang: len(ids) for lang, (ids, _) in para.items()}
    return calib_lib.build(tuple(languages), *samples, num_levels=num_levels, provenance=prov)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(tie), by ranks."""
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def diagnose(embeddings: dict, languages: Sequence[str], *, seed: int = 0, num_levels: int = 101,
             same_language: str = "identity", paraphrases: dict | None = None, mismatches: int = 4,
             hard_negatives: int = 2) -> dict:
    """Fit on half the items, evaluate on the other half: spread of equivalent means across pairs
    (raw vs mean- vs quantile-calibrated) and per-pair equivalent-vs-mismatched AUC, over the
    cross-language pairs and, with paraphrases, the same-language ones (an identical "equivalent"
    measures nothing)."""
    import jax.numpy as jnp
    all_ids = sorted(set().union(*[set(embeddings[lang][0]) for lang in languages]))
    rng = np.random.default_rng(seed)
    fit_ids = set(rng.choice(all_ids, size=len(all_ids) // 2, replace=False).tolist())
    test_ids = set(all_ids) - fit_ids
    # The same sample recipe as the saved table (the quantile grid pools all kinds).
    same = dict(same_language=same_language, paraphrases=paraphrases, mismatches=mismatches,
                hard_negatives=hard_negatives)
    table = calib_lib.build(tuple(languages), *similarity_samples(embeddings, languages, subset=fit_ids, seed=seed,
                                                                  **same), num_levels=num_levels)
    a, b, kind, sim = similarity_samples(embeddings, languages, subset=test_ids, seed=seed + 1, **same)
    if not len(sim):
        raise ValueError(f"{len(all_ids)} parallel items are too few for the held-out diagnostic (half fit, half "
                         f"test, each needing mismatched items); use more items")
    scores = {"raw": sim}
    for method in ("mean", "quantile"):
        value, _ = calib_lib.calibrate(table, jnp.asarray(sim), jnp.asarray(a), jnp.asarray(b), method)
        scores[method] = np.asarray(value)
    report = {"languages": list(languages), "fit_items": len(fit_ids), "test_items": len(test_ids), "pairs": {}}
    eq_means = {m: [] for m in scores}
    for ai, la in enumerate(languages):
        for bi, lb in enumerate(languages):
            sel = (a == ai) & (b == bi)
            if (ai == bi and same_language != "paraphrase") or not sel.any() or not bool(table.present[ai, bi]):
                continue
            entry = {}
            for m, v in scores.items():
                pos, neg = v[sel & (kind == 0)], v[sel & (kind == 1)]
                eq_means[m].append(float(pos.mean()))
                entry[m] = {"equivalent_mean": float(pos.mean()), "auc": _auc(pos, neg)}
            report["pairs"][f"{la}->{lb}"] = entry
    # Spread in units of each method's own scale: raw cosines span (-1, 1), rewards (0, 1).
    scale = {"raw": 0.5, "mean": 1.0, "quantile": 1.0}
    report["spread"] = {m: float(np.std(v) * scale[m]) for m, v in eq_means.items()}
    report["spread_shrink"] = {m: report["spread"]["raw"] / max(report["spread"][m], 1e-12)
                               for m in ("mean", "quantile")}
    report["max_auc_drop"] = {m: max(p["raw"]["auc"] - p[m]["auc"] for p in report["pairs"].values())
                              for m in ("mean", "quantile")}
    return report


def plot_report(report: dict, embeddings_table: calib_lib.CalibrationTable, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    langs = report["languages"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    mean = np.asarray(embeddings_table.mean)
    im = axes[0].imshow(mean, cmap="viridis")
    axes[0].set_xticks(range(len(langs)), langs)
    axes[0].set_yticks(range(len(langs)), langs)
    axes[0].set_title("raw equivalent-pair mean cosine\n(row: reference, col: response)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    for m, ax_i in (("raw", 1), ("mean", 1), ("quantile", 1)):
        vals = [(p[m]["equivalent_mean"] + 1) / 2 if m == "raw" else p[m]["equivalent_mean"]
                for p in report["pairs"].values()]
        axes[ax_i].hist(vals, bins=30, alpha=0.6, label=f"{m} (std {np.std(vals):.4f})")
    axes[1].set_title("held-out equivalent-pair means across pairs\n(raw on the (s+1)/2 scale)")
    axes[1].legend()
    raw_auc = [p["raw"]["auc"] for p in report["pairs"].values()]
    axes[2].scatter(raw_auc, [p["mean"]["auc"] for p in report["pairs"].values()], s=8, label="mean")
    axes[2].scatter(raw_auc, [p["quantile"]["auc"] for p in report["pairs"].values()], s=8, label="quantile")
    axes[2].plot([0.5, 1], [0.5, 1], "k--", lw=0.8)
    axes[2].set_xlabel("raw AUC (equivalent vs mismatched)")
    axes[2].set_ylabel("calibrated AUC")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(cfg, out: pathlib.Path) -> None:
    """The CLI's build: table, embeddings cache and report in `out` (made only once data checks pass)."""
    from lrpo_jax import vocab
    from lrpo_jax.data import sources
    from lrpo_jax.models import shipped
    from lrpo_jax.rewards.similarity import SimilarityModel
    langs = tuple(cfg.languages)
    # Settings checked before anything is embedded or written.
    if cfg.text_field not in TEXT_FIELDS:
        raise ValueError(f"config.text_field={cfg.text_field!r} (configs/calibrate.py:field=...); expected 'answer' "
                         f"or 'question'")
    if cfg.same_language not in SAME_LANGUAGE:
        raise ValueError(f"config.same_language={cfg.same_language!r}; expected one of {SAME_LANGUAGE}")
    v = dict(languages=vocab.language_vocab(langs, "config.languages (configs/calibrate.py:langs=...)"),
             topics=vocab.topic_vocab(), regions=vocab.region_vocab())
    examples, skipped = sources.load_examples(cfg.data, **v)
    if skipped:
        print(f"skipped rows by field: {dict(skipped)}")
    items = parallel_items(examples, langs)
    require_parallel_items(items, examples, langs)
    out.mkdir(parents=True, exist_ok=True)
    model = SimilarityModel.from_folder(shipped.resolve(cfg.encoder), max_length=cfg.max_length,
                                        pooling=cfg.pooling)
    key = f"{cfg.encoder}|{cfg.pooling}|{cfg.max_length}"
    emb = embed_answers(model, items, langs, out, field=cfg.text_field, model_key=key)
    para = None
    if cfg.same_language == "paraphrase":
        para = embed_answers(model, paraphrase_items(examples, langs, cfg.text_field), langs, out,
                             field=cfg.text_field, model_key=key, name="para")
    same = dict(same_language=cfg.same_language, paraphrases=para)
    prov = {"encoder": cfg.encoder, "pooling": cfg.pooling, "max_length": cfg.max_length, "data": cfg.data.source,
            "data_path": str(cfg.data.get("path", "") or ""), "items": len(items), "field": cfg.text_field,
            "same_language": cfg.same_language, "mismatches": cfg.mismatches, "hard_negatives": cfg.hard_negatives,
            "seed": cfg.seed}
    if para is not None:
        prov["paraphrases"] = {lang: len(ids) for lang, (ids, _) in para.items()}
        without = [lang for lang, n in prov["paraphrases"].items() if n < 3]
        if without:
            print(f"same-language pairs: no paraphrase rows for {without}: those (a, a) pairs are absent "
                  f"(reward.missing_pair decides how they score)")
    table = calib_lib.build(langs, *similarity_samples(emb, langs, mismatches=cfg.mismatches,
                                                       hard_negatives=cfg.hard_negatives, seed=cfg.seed, **same),
                            num_levels=cfg.num_levels, provenance=prov)
    # The diagnostic before the table: if it fails (too few items), no table is left behind looking usable.
    report = diagnose(emb, langs, seed=cfg.seed, num_levels=cfg.num_levels, mismatches=cfg.mismatches,
                      hard_negatives=cfg.hard_negatives, **same)
    path = calib_lib.save(table, out / calib_lib.TABLE_FILE)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_report(report, table, out / "report.png")
    print(f"table: {path}\nreport: {out / 'report.json'}, {out / 'report.png'}")
    print(f"across-pair spread of held-out equivalent means: raw {report['spread']['raw']:.4f}, "
          f"mean-calibrated {report['spread']['mean']:.5f} ({report['spread_shrink']['mean']:.1f}x smaller), "
          f"quantile {report['spread']['quantile']:.5f} ({report['spread_shrink']['quantile']:.1f}x)")
    print(f"largest per-pair AUC drop: mean {report['max_auc_drop']['mean']:.4f}, "
          f"quantile {report['max_auc_drop']['quantile']:.4f}")


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "configs/calibrate.py[:args]")
    workdir = flags.DEFINE_string("workdir", None, "output folder (table, embeddings cache, report)")
    flags.mark_flags_as_required(["config", "workdir"])
    def go(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        run(config.value, pathlib.Path(workdir.value))
    app.run(go, argv)


if __name__ == "__main__":
    main()
