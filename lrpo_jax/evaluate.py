"""Evaluation CLI: math exact match + language compliance, reference answers, multiple choice.

    python -m lrpo_jax.evaluate --config configs/evaluate.py --checkpoint runs/demo --out runs/demo/eval
    python -m lrpo_jax.evaluate --config configs/evaluate.py:mgsm=../shared/data/mgsm,n=20 \\
        --baseline --checkpoint runs/demo --hf_dir runs/warm/hf --out runs/compare
    python -m lrpo_jax.evaluate --judge_grades grades.jsonl --out runs/demo/eval   # import judge replies

Models: `--checkpoint DIR` is a training workdir (its config.json says which policy and prompt
mode it was trained with; the latest checkpoint is used, `DIR@STEP` picks one), `--hf_dir DIR` a
local Hugging Face folder (e.g. a warm-start export), `--baseline` the config's own `policy`.
Several models in one call give one comparison table. Tasks (config.tasks):
* math: exact numeric match per language (MGSM TSVs or multilingual-gsm-symbolic), greedy by
  default, answer requested in the question's language or in forced languages; the language-ID
  compliance rate is reported beside accuracy (and `accuracy_compliant`: right and in language).
* reference: CARE-style answers scored by calibrated similarity to the gold answer, per language
  and category, and exported as LLM-judge requests in the reference's 4-label format.
* mc: option log-likelihood (letter or option text continuations) on local MC files.
Outputs in --out: results.{md,json,csv,png} and generations.jsonl (every prompt's response).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from lrpo_jax.evaluation import judge as judge_lib
from lrpo_jax.evaluation import report, tasks


# ==================================================================================================
# Models under test.
# ==================================================================================================
@dataclasses.dataclass
class Candidate:
    name: str
    dcfg: Any
    graphdef: Any
    params: Any
    tokenizer: Any
    prompt_mode: str        # the mode the model was trained with ("" = unknown)
    chat_template: str = ""  # its prompt.chat_template in training ("" = unknown)


def _config_json(folder: pathlib.Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _train_workdir(path: str, hf_usage: str = "--hf_dir {}") -> tuple[pathlib.Path, int | None]:
    given = path
    path, _, step = path.partition("@")
    if step and not step.isdigit():
        raise ValueError(f"--checkpoint {given}: the part after '@' must be a step number (DIR@STEP), got {step!r}")
    wd = pathlib.Path(path)
    if not (wd / "config.json").exists() and (wd.parent / "config.json").exists():
        wd = wd.parent  # the checkpoints/ folder itself was given
    if not (wd / "config.json").exists():
        raise FileNotFoundError(f"--checkpoint {path}: no config.json (a training --workdir is expected)")
    # Caught here, not as a bare KeyError 'policy' after the swap of --checkpoint and --hf_dir.
    cfg = _config_json(wd)
    if "model_type" in cfg and "policy" not in cfg:
        raise ValueError(f"--checkpoint {path} is a Hugging Face model folder (config.json has model_type "
                         f"{cfg['model_type']!r}), not a training workdir: pass it as {hf_usage.format(path)}")
    if "policy" not in cfg:
        raise ValueError(f"--checkpoint {path}: {wd / 'config.json'} has no 'policy' section "
                         f"(a training --workdir is expected)")
    return wd, int(step) if step else None


def check_hf_folder(folder: str, given: str = "", fix: str = "--checkpoint {}") -> None:
    """A training workdir given where a Hugging Face folder is expected: say so before transformers
    fails deep inside its tokenizer loading. `given` names the flag as the user wrote it."""
    path = pathlib.Path(folder).expanduser()
    if (path / "checkpoints").is_dir() or "policy" in _config_json(path):
        raise ValueError(f"{given or '--hf_dir ' + folder} is a training workdir (checkpoints/ and a config.json "
                         f"with a 'policy' section), not a Hugging Face model folder: pass it as {fix.format(folder)}")


def restore_policy(workdir: str, mesh=None, hf_usage: str = "--hf_dir {}", name: str = "") -> Candidate:
    """The policy of a training workdir's latest (or `@STEP`) checkpoint, restored onto `mesh`, named
    `<name or the workdir's name>@<step>`.

    Reads the step counter and the params only, not the optimizer state or the router. `hf_usage`
    is the caller's flag for a Hugging Face folder, named when one is given here by mistake."""
    from lrpo_jax import checkpoint, parallel, policy as policy_lib
    wd, step = _train_workdir(workdir, hf_usage)
    tcfg = ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))
    # Shapes only: the base weights would be read just to be overwritten by the checkpoint's.
    dcfg, graphdef, shapes, tokenizer = policy_lib.load_policy(tcfg.policy, tcfg.seed, abstract=True)
    mesh = mesh or parallel.make_mesh((("data", 1), ("fsdp", -1), ("tensor", 1)))
    shardings = parallel.param_shardings(shapes, mesh)
    abstract = {"step": jax.ShapeDtypeStruct((), np.int32, sharding=parallel.replicated(mesh)),
                "params": checkpoint.abstract_like(shapes, shardings)}
    ckpt = checkpoint.Checkpointer(wd / "checkpoints", async_save=False)
    state = ckpt.restore_fields(abstract, step)
    ckpt.close()
    return Candidate(f"{name or wd.name}@{int(state['step'])}", dcfg, graphdef, state["params"], tokenizer,
                     tcfg.prompt.mode, tcfg.prompt.get("chat_template", ""))


def load_hf(folder: str, ecfg, mesh, name: str = "") -> Candidate:
    check_hf_folder(folder)
    pol = ml_collections.ConfigDict(dict(source=f"hf:{folder}", dtype=ecfg.policy.dtype,
                                         param_dtype=ecfg.policy.param_dtype, remat=False, random_init=False,
                                         overrides={}))
    return _from_policy_config(pol, name or pathlib.Path(folder).name, mesh)


def _from_policy_config(pol, name, mesh, seed: int = 0) -> Candidate:
    """A policy config's model, with the prompt settings a warm-start export records (PROMPT_FILE)."""
    from lrpo_jax import parallel, policy as policy_lib
    dcfg, graphdef, params, tokenizer = policy_lib.load_policy(pol, seed)
    params = jax.device_put(params, parallel.param_shardings(params, mesh))
    taught = policy_lib.taught_prompt(pol.source)
    return Candidate(name, dcfg, graphdef, params, tokenizer, taught["mode"], taught["chat_template"])


def unique_labels(paths: Sequence[pathlib.Path]) -> list[str]:
    """Each path's shortest trailing part that no other path shares: names in the results tables
    ('hf' twice becomes 'warmA/hf' and 'warmB/hf'); the same path twice keeps its name."""
    parts = [pathlib.Path(p).expanduser().resolve().parts for p in paths]
    labels = []
    for i, p in enumerate(parts):
        depth = 1
        while depth < len(p) and any(q != p and q[-depth:] == p[-depth:] for q in parts):
            depth += 1
        labels.append("/".join(p[-depth:]))
    return labels


# ==================================================================================================
# Generation and scoring primitives.
# ==================================================================================================
def _stop_markers() -> tuple[str, ...]:
    """Where a base model starts the next few-shot turn: '\\nQuestion:' in any prompt language."""
    from lrpo_jax.data.prompts import LANGUAGE_TEXT
    labels = {v[1] for v in LANGUAGE_TEXT.values()} | {"Question", "Q"}
    return tuple(f"\n{label}:" for label in labels) + tuple(f"\n{label} :" for label in labels)


def cut_continuation(text: str, markers: Sequence[str]) -> str:
    """Drops what a base model writes after its answer (the next invented question)."""
    cut = min((i for i in (text.find(m) for m in markers) if i >= 0), default=len(text))
    return text[:cut].strip()


class Runner:
    """Generation and log-likelihood scoring for one candidate, in fixed-size sharded batches."""

    def __init__(self, cand: Candidate, ecfg, mesh, programs: dict | None = None):
        """`programs` is shared by the runners of one evaluation: checkpoints of the same architecture
        reuse one Sampler and one log-prob function per shape, so only the first model compiles."""
        from lrpo_jax import policy as policy_lib
        from lrpo_jax.sampling.sampler import Sampler, SamplerSpec
        self.cand, self.ecfg, self.mesh = cand, ecfg, mesh
        tok = cand.tokenizer
        self.eos = policy_lib.eos_ids(cand.dcfg, tok)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos[0]
        self.batch = ecfg.batch_size
        spec = SamplerSpec(max_new_tokens=ecfg.decode.max_new_tokens, eos_ids=self.eos, pad_id=self.pad,
                           prompt_buckets=tuple(ecfg.prompt_buckets), batch_buckets=(self.batch,))
        programs = {} if programs is None else programs
        key = (cand.dcfg, spec)
        if key not in programs:
            programs[key] = (Sampler(cand.graphdef, cand.dcfg, spec, mesh=mesh), {})
        self.sampler, self._logp = programs[key]

    def generate(self, prompts: list[list[int]], key) -> list[str]:
        from lrpo_jax.sampling.processing import SamplingParams
        d = self.ecfg.decode
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a bucket
        texts: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            key, sub = jax.random.split(key)
            sp = SamplingParams.make(len(idx), d.temperature, d.top_k, d.top_p)
            out = self.sampler.generate(self.cand.params, [prompts[i] for i in idx], sub, sp)
            for j, i in enumerate(idx):
                texts[i] = self.cand.tokenizer.decode(out.tokens[j][: out.lengths[j]], skip_special_tokens=True)
        return texts

    def loglik(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """Sum of log p(continuation | prompt) per (prompt ids, continuation ids) pair."""
        from lrpo_jax import parallel, policy as policy_lib
        from lrpo_jax.sampling import buckets
        out = np.zeros(len(pairs), np.float64)
        R = buckets.pick_bucket(max(len(c) for _, c in pairs), (4, 16, 64, 256), "continuation length")
        if R not in self._logp:
            self._logp[R] = jax.jit(policy_lib.make_logp_fn(self.cand.graphdef, R))
        fn = self._logp[R]
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            rows = [pairs[i] for i in idx] + [pairs[idx[0]]] * (self.batch - len(idx))  # fixed batch shape
            Tp = buckets.pick_bucket(max(len(p) for p, _ in rows), self.ecfg.prompt_buckets, "prompt length")
            p_tok, p_mask = buckets.left_pad([p for p, _ in rows], Tp, self.pad)
            r_tok = np.full((len(rows), R), self.pad, np.int32)
            r_mask = np.zeros((len(rows), R), np.int32)
            for j, (_, c) in enumerate(rows):
                r_tok[j, :len(c)], r_mask[j, :len(c)] = c, 1
            batch = policy_lib.assemble(p_tok, p_mask, r_tok, r_mask)
            batch.pop("response_mask")
            lp, _ = fn(self.cand.params, parallel.shard_batch(batch, self.mesh))
            sums = (np.asarray(parallel.to_host(lp)) * r_mask).sum(axis=1)
            out[idx] = sums[: len(idx)]
        return out


def _rate(flags) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def _records(model, task, metric_values: dict, n_by_lang: dict) -> list[dict]:
    return [{"model": model, "task": task, "metric": metric, "language": lang, "value": _rate(vals),
             "n": n_by_lang[lang]} for metric, by_lang in metric_values.items() for lang, vals in sorted(by_lang.items())]


# ==================================================================================================
# Tasks.
# ==================================================================================================
def _targets(item, answer_language: str) -> list[str]:
    if answer_language in ("", "question"):
        return [item.language]
    from lrpo_jax.data.prompts import language_code  # codes or English names, as in the training data
    return [language_code(c.strip(), "config.math.answer_language")
            for c in re.split(r"[,+]", answer_language) if c.strip()]  # "en,de" or "en+de"


def eval_math(runner: Runner, builder, lid, items, ecfg, key, log) -> list[dict]:
    """Accuracy (numeric match), compliance (LID top-1 == requested language), both, per language."""
    from lrpo_jax.rewards import verifiable
    jobs = [(it, t) for it in items for t in _targets(it, ecfg.math.answer_language)]
    prompts = [builder.tokens(it.question, t) for it, t in jobs]
    markers = _stop_markers()
    texts = [cut_continuation(t, markers) for t in runner.generate(prompts, key)]
    predicted, _, _ = lid.predict(texts)
    vals = collections.defaultdict(lambda: collections.defaultdict(list))
    n = collections.Counter()
    for (it, tgt), text, lang in zip(jobs, texts, predicted):
        correct, why = verifiable.score(text, it.numeric_answer)
        comply = float(lang == tgt)
        key_lang = tgt
        n[key_lang] += 1
        vals["accuracy"][key_lang].append(correct)
        vals["compliance"][key_lang].append(comply)
        vals["accuracy_compliant"][key_lang].append(correct * comply)
        log.append({"model": runner.cand.name, "task": "math", "id": it.id, "question_language": it.language,
                    "requested_language": tgt, "lid_language": lang, "correct": correct, "reason": why,
                    "gold": it.numeric_answer, "response": text})
    return _records(runner.cand.name, "math", vals, n)


def eval_reference(runner: Runner, builder, rewards, items, ecfg, key, log, judge_rows) -> list[dict]:
    """Calibrated similarity to the gold answer per language (and per category), compliance; judge rows."""
    prompts = [builder.tokens(it.question, it.language) for it in items]
    markers = _stop_markers()
    texts = [cut_continuation(t, markers) for t in runner.generate(prompts, key)]
    res = rewards.score(texts, [it.language for it in items], [it.id for it in items], [it.answer for it in items],
                        [it.language for it in items])
    vals = collections.defaultdict(lambda: collections.defaultdict(list))
    n = collections.Counter()
    for i, (it, text) in enumerate(zip(items, texts)):
        cal, raw, gate = (float(res.components[k][i]) for k in ("calibrated", "similarity", "gate"))
        if not text.strip():  # as in training (RewardModel.score zeroes empty responses): no answer, no credit
            cal = raw = 0.0
        n[it.language] += 1
        vals["calibrated_similarity"][it.language].append(cal)
        vals["raw_similarity"][it.language].append(raw)
        vals["compliance"][it.language].append(gate)
        if it.category:
            vals[f"calibrated_similarity[{it.category}]"][it.language].append(cal)
        log.append({"model": runner.cand.name, "task": "reference", "id": it.id, "language": it.language,
                    "category": it.category, "lid_language": res.predicted_language[i], "similarity": raw,
                    "calibrated": cal, "response": text})
        judge_rows.append({"model": runner.cand.name, "id": it.id, "language": it.language, "category": it.category,
                           "question": it.question, "target": it.answer, "predicted_answer": text})
    recs = _records(runner.cand.name, "reference", vals, n)
    for r in recs:  # category metrics count only their category's items
        if "[" in r["metric"]:
            r["n"] = len(vals[r["metric"]][r["language"]])
    return recs


def mc_prompt(item: tasks.Item, scoring: str) -> tuple[str, list[str]]:
    """Plain-text MC prompt (lm-eval style) and the continuations to score."""
    letters = [chr(65 + j) for j in range(len(item.options))]
    if scoring == "letter":
        body = "\n".join(f"{ch}. {opt}" for ch, opt in zip(letters, item.options))
        return f"{item.question.strip()}\n{body}\nAnswer:", [f" {ch}" for ch in letters]
    if scoring == "text":
        return f"{item.question.strip()}\nAnswer:", [f" {opt}" for opt in item.options]
    raise ValueError(f"config.mc.scoring={scoring!r}; expected 'letter' or 'text'")


def eval_mc(runner: Runner, items, ecfg, log) -> list[dict]:
    """Accuracy by summed log-likelihood (and length-normalised `accuracy_norm` for text scoring)."""
    tok = runner.cand.tokenizer
    pairs, spans = [], []
    for it in items:
        text, conts = mc_prompt(it, ecfg.mc.scoring)
        p = tok(text, add_special_tokens=True)["input_ids"]
        spans.append((len(pairs), len(conts), [len(c) for c in conts]))
        pairs += [(p, tok(c, add_special_tokens=False)["input_ids"]) for c in conts]
    ll = runner.loglik(pairs)
    vals = collections.defaultdict(lambda: collections.defaultdict(list))
    n = collections.Counter()
    for it, (s, k, chars) in zip(items, spans):
        scores = ll[s:s + k]
        pick = int(np.argmax(scores))
        pick_norm = int(np.argmax(scores / np.maximum(chars, 1)))
        n[it.language] += 1
        vals["accuracy"][it.language].append(float(pick == it.gold))
        if ecfg.mc.scoring == "text":
            vals["accuracy_norm"][it.language].append(float(pick_norm == it.gold))
        log.append({"model": runner.cand.name, "task": "mc", "id": it.id, "language": it.language,
                    "gold": it.gold, "pick": pick, "loglik": [float(x) for x in scores]})
    return _records(runner.cand.name, "mc", vals, n)


# ==================================================================================================
# Driver.
# ==================================================================================================
def validate(ecfg) -> None:
    from lrpo_jax import config_lib
    config_lib.check_keys(ecfg, get_schema())
    unknown = [t for t in ecfg.tasks if t not in ("math", "reference", "mc")]
    if unknown:
        raise ValueError(f"config.tasks has unknown task(s) {unknown}; expected math, reference, mc")
    if "reference" in ecfg.tasks and not ecfg.reference.path:
        raise ValueError("config.tasks includes 'reference' but config.reference.path is empty")
    if "mc" in ecfg.tasks and not ecfg.mc.path:
        raise ValueError("config.tasks includes 'mc' but config.mc.path is empty")
    for task, arg in (("reference", "care"), ("mc", "mc")):  # a file given for a task that will not run
        if ecfg[task].path and task not in ecfg.tasks:
            raise ValueError(f"config.{task}.path is set but config.tasks={tuple(ecfg.tasks)} lacks {task!r}: add it "
                             f"(configs/evaluate.py:tasks=math+{task},{arg}=...)")
    if ecfg.batch_size <= 0:
        raise ValueError(f"config.batch_size={ecfg.batch_size} must be positive")
    from lrpo_jax import policy as policy_lib
    policy_lib.check_prompt_settings(ecfg.prompt)
    if ecfg.mc.scoring not in ("letter", "text"):
        raise ValueError(f"config.mc.scoring={ecfg.mc.scoring!r}; expected 'letter' or 'text'")
    if ecfg.math.answer_language not in ("", "question"):  # a bad forced language fails before any model loads
        _targets(None, ecfg.math.answer_language)


def get_schema() -> ml_collections.ConfigDict:
    """configs/evaluate.py's defaults: every evaluation config key must exist there."""
    from lrpo_jax.config_lib import load_sibling
    return load_sibling(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"),
                        "evaluate").get_config()


def evaluate(ecfg, *, checkpoints: Sequence[str] = (), hf_dirs: Sequence[str] = (), baseline: bool = False,
             out: str | None = None) -> list[dict]:
    """Evaluates every model on every configured task; writes the tables to `out` if given."""
    from lrpo_jax import parallel, policy as policy_lib
    from lrpo_jax.data.prompts import PromptBuilder
    from lrpo_jax.rewards.lid import LanguageID
    validate(ecfg)
    mesh = parallel.make_mesh(tuple(tuple(a) for a in ecfg.mesh))
    data_par = mesh.shape["data"] * mesh.shape["fsdp"]
    if ecfg.batch_size % data_par:
        raise ValueError(f"config.batch_size={ecfg.batch_size} must be a multiple of the {data_par} data-parallel "
                         f"devices of config.mesh")
    langs = tuple(ecfg.languages)
    if out:
        from lrpo_jax.checkpoint import local_workdir
        local_workdir(out, "--out")  # a URL would become a local 'gs:' folder
    # Models with the same folder name (every warm-start export is WORKDIR/hf) get their parents' names.
    labels = unique_labels([_train_workdir(c)[0] for c in checkpoints] + [pathlib.Path(h) for h in hf_dirs])
    loaders = [(lambda c=c, n=n: restore_policy(c, mesh, name=n)) for c, n in zip(checkpoints, labels)]
    loaders += [(lambda h=h, n=n: load_hf(h, ecfg, mesh, name=n)) for h, n in zip(hf_dirs, labels[len(checkpoints):])]
    if baseline or not loaders:
        loaders.insert(0, lambda: _from_policy_config(ecfg.policy, "base", mesh))

    # Items and scorers are shared by all models; rows in other languages are counted, not dropped unseen.
    items = {}
    if "math" in ecfg.tasks:
        items["math"] = tasks.math_items(ecfg.math.source, langs, ecfg.math.path, ecfg.max_items)
    for task, read, path in (("reference", tasks.reference_items, ecfg.reference.path),
                             ("mc", tasks.mc_items, ecfg.mc.path)):
        if task in ecfg.tasks:
            skipped = {}
            items[task] = read(path, langs, ecfg.max_items, skipped=skipped)
            if skipped:
                print(f"{task}: {sum(skipped.values())} row(s) of {path} in languages outside config.languages "
                      f"skipped: {dict(sorted(skipped.items()))}", flush=True)
            if not items[task]:
                raise ValueError(f"{task}: no rows of {path} are in config.languages {list(langs)} (the file has "
                                 f"{sorted(skipped)}): set the languages, e.g. configs/evaluate.py:langs=zh+hi")
    targets = set(langs) | {t for it in items.get("math", []) for t in _targets(it, ecfg.math.answer_language)}
    lid = LanguageID(sorted(targets | {it.language for v in items.values() for it in v}))
    rewards = _reference_rewards(ecfg, lid) if "reference" in items else None

    records, log, judge_rows, programs = [], [], [], {}
    key = jax.random.key(ecfg.seed)
    for load in loaders:
        cand = load()
        mode, chat = policy_lib.prompt_settings(ecfg.prompt.mode, ecfg.prompt.chat_template, cand.prompt_mode,
                                                cand.chat_template)
        builder = PromptBuilder(cand.tokenizer, mode=mode, chat_template=chat)
        runner = Runner(cand, ecfg, mesh, programs)
        print(f"evaluating {cand.name} (prompt mode {mode!r}, chat template {chat!r})", flush=True)
        if "math" in items:
            records += eval_math(runner, builder, lid, items["math"], ecfg, key, log)
        if "reference" in items:
            records += eval_reference(runner, builder, rewards, items["reference"], ecfg, key, log, judge_rows)
        if "mc" in items:
            records += eval_mc(runner, items["mc"], ecfg, log)
        del runner, cand
    show_results(records, log, judge_rows, out)
    return records


def show_results(records: list[dict], log: list[dict], judge_rows: list[dict], out: str | None) -> None:
    """Prints the table always (an evaluation without --out is still a result); writes files to `out`."""
    print(report.markdown(records))
    if not out:
        return
    out = pathlib.Path(out)
    paths = report.write(records, out)
    with open(out / "generations.jsonl", "w", encoding="utf-8") as f:
        for row in log:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if judge_rows:
        judge_lib.export_requests(judge_rows, out / "judge_requests.jsonl")
    print(f"wrote {', '.join(str(p) for p in paths.values())}" +
          (f" and {out / 'judge_requests.jsonl'}" if judge_rows else ""))


def _reference_rewards(ecfg, lid):
    from lrpo_jax import trainer
    from lrpo_jax.models import shipped
    from lrpo_jax.rewards.combine import RewardModel
    from lrpo_jax.rewards.similarity import SimilarityModel
    r = ecfg.reference
    sim = SimilarityModel.from_folder(shipped.resolve(r.encoder), max_length=r.max_length,
                                      length_buckets=tuple(r.length_buckets), pooling=r.pooling)
    table = trainer.calibration_table(ml_collections.ConfigDict({"reward": r}), sim, lid.languages)
    return RewardModel(sim, lid, table, calibration=r.calibration, gate="hard", missing_pair=r.missing_pair,
                       languages=lid.languages)


def import_judge(out: str | pathlib.Path, grades: str) -> list[dict]:
    """Judge replies for `out/judge_requests.jsonl` -> `out/judge.{md,json,csv,png}`."""
    out = pathlib.Path(out)
    records = judge_lib.import_grades(out / "judge_requests.jsonl", grades)
    report.write(records, out, name="judge")
    print(report.markdown(records))
    return records


def main(argv):
    from absl import app, flags
    if len(argv) > 1:  # e.g. a workdir without --checkpoint: never evaluate the base model instead
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore step at INFO
    from lrpo_jax import compile_cache
    compile_cache.enable("auto")
    f = flags.FLAGS
    if f.judge_grades:
        if not f.out:
            raise SystemExit("--judge_grades needs --out (the folder holding judge_requests.jsonl)")
        import_judge(f.out, f.judge_grades)
        return
    if _CONFIG.value is None:
        raise SystemExit("--config is required (e.g. --config configs/evaluate.py)")
    split = lambda vals: [p for v in vals or () for p in v.split(",") if p]  # noqa: E731
    evaluate(_CONFIG.value, checkpoints=split(f.checkpoint), hf_dirs=split(f.hf_dir), baseline=f.baseline, out=f.out)


if __name__ == "__main__":
    # Flags are defined here, not at import: `train` defines --config too, and tests import both.
    from absl import app, flags
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/evaluate.py[:args]).")
    flags.DEFINE_multi_string("checkpoint", None, "Training workdir(s) (DIR or DIR@STEP; repeat or comma-separate).")
    flags.DEFINE_multi_string("hf_dir", None, "Local Hugging Face policy folder(s).")
    flags.DEFINE_bool("baseline", False, "Also evaluate config.policy (the untrained base model).")
    flags.DEFINE_string("out", None, "Output folder for the tables and generations.")
    flags.DEFINE_string("judge_grades", None, "Import an external judge's replies for --out/judge_requests.jsonl.")
    app.run(main)
