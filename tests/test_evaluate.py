"""Evaluation CLI pieces: task files, judge round trip, tables, and an end-to-end run on a smoke checkpoint."""
import json
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from lrpo_jax import config_lib, evaluate
from lrpo_jax.evaluation import judge, report, tasks

REPO = pathlib.Path(__file__).resolve().parents[1]


def _eval_cfg(arg=""):
    return config_lib.load_sibling(str(REPO / "configs" / "common.py"), "evaluate").get_config(arg)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


MC_ROWS = [
    {"id": "q1", "language": "de", "question": "Was ist 2+2?", "options": ["3", "4", "5", "6"], "answer": "B"},
    {"id": "q2", "language": "japanese", "question": "1+1は？", "option_a": "2", "option_b": "3", "answer": 0},
    {"id": "q3", "language": "de", "question": "Hauptstadt?", "options": {"A": "Paris", "B": "Rom"}, "answer": "A",
     "subject": "geo"},
]


# ---------------------------------------------------------------------------------------------- tasks
def test_mc_items_accept_list_dict_and_column_options(tmp_path):
    items = tasks.mc_items(str(_write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)))
    assert [(it.language, it.options, it.gold) for it in items] == [
        ("de", ("3", "4", "5", "6"), 1), ("ja", ("2", "3"), 0), ("de", ("Paris", "Rom"), 0)]
    assert items[2].category == "geo"
    assert [it.id for it in tasks.mc_items(str(tmp_path / "mc.jsonl"), languages=("ja",))] == ["q2"]


@pytest.mark.parametrize("row, message", [
    ({"language": "de", "question": "x", "options": ["a", "b"], "answer": "C"}, "line 1: field 'answer'"),
    ({"language": "de", "question": "x", "options": ["a", "b"], "answer": 5}, "line 1: field 'answer' index 5"),
    ({"language": "de", "question": "x", "answer": "A"}, "line 1: no options"),
    ({"language": "klingon", "question": "x", "options": ["a", "b"], "answer": "A"}, "line 1 field 'language'"),
    ({"question": "x", "options": ["a", "b"], "answer": "A"}, "line 1: field 'language' is missing$"),
    ({"language": "de", "question": "x", "options": {"a": "1", "A": "2"}, "answer": "A"}, "differ only in case"),
])
def test_mc_items_errors_name_row_and_field(tmp_path, row, message):
    with pytest.raises(Exception, match=message):
        tasks.mc_items(str(_write_jsonl(tmp_path / "bad.jsonl", [row])))


def test_mc_option_letters_are_case_insensitive(tmp_path):
    rows = [{"language": "de", "question": "2+2?", "options": {"b": "4", "a": "3"}, "answer": "b"},
            {"language": "de", "question": "2+2?", "options": {"a": "3", "b": "4"}, "answer": "B"},
            {"language": "de", "question": "2+2?", "options": {"A": "3", "B": "4"}, "answer": "b"}]
    items = tasks.mc_items(str(_write_jsonl(tmp_path / "mc.jsonl", rows)))
    assert [(it.options, it.gold) for it in items] == [(("3", "4"), 1)] * 3


def test_reference_items_and_errors(tmp_path):
    path = tmp_path / "care.json"
    path.write_text(json.dumps([{"id": "a", "language": "zh", "question": "q", "answer": "x", "culture_type": "food"},
                                {"id": "b", "language": "hi", "question": "q", "answer": "y"}]))
    items = tasks.reference_items(str(path), languages=("zh",))
    assert [(it.id, it.language, it.category) for it in items] == [("a", "zh", "food")]
    path.write_text(json.dumps([{"id": "a", "language": "zh", "question": "q", "answer": " "}]))
    with pytest.raises(ValueError, match="care.json: list index 0: field 'answer'"):
        tasks.reference_items(str(path))
    # Rows in other languages are counted; unreadable files and non-object rows name the file.
    path.write_text(json.dumps([{"id": "a", "language": "zh", "question": "q", "answer": "x"},
                                {"id": "b", "language": "hi", "question": "q", "answer": "y"},
                                {"id": "c", "language": "hindi", "question": "q", "answer": "z"}]))
    skipped = {}
    assert len(tasks.reference_items(str(path), languages=("zh",), skipped=skipped)) == 1 and skipped == {"hi": 2}
    path.write_text('[{"id": "a",}]')
    with pytest.raises(ValueError, match=r"care.json: not valid JSON"):
        tasks.reference_items(str(path))
    path.write_text('[["q", "a"]]')
    with pytest.raises(ValueError, match=r"care.json: list index 0: not an object but list"):
        tasks.reference_items(str(path))


def test_math_items_from_mgsm(mgsm_dir):
    with pytest.raises(ValueError, match=r"config.languages has \['ar'\], which the MGSM directory .* has no "
                                         r"mgsm_<lang>.tsv for \(it has \['bn', 'de', 'en', "):
        tasks.math_items("mgsm", ("de", "ar"), str(mgsm_dir))
    items = tasks.math_items("mgsm", ("de", "ja"), str(mgsm_dir), max_items=3)
    assert [it.language for it in items] == ["de"] * 3 + ["ja"] * 3
    assert items[0].numeric_answer == 18.0 and items[3].numeric_answer == 18.0  # parallel first problem


def test_cut_continuation_stops_at_the_next_invented_question():
    markers = evaluate._stop_markers()
    assert evaluate.cut_continuation(" 12 + 8 = 20. Die Antwort ist 20.\n\nFrage: Ein Hund ...", markers) == \
        "12 + 8 = 20. Die Antwort ist 20."
    assert evaluate.cut_continuation("答えは20です。\n質問: 次", markers) == "答えは20です。"
    assert evaluate.cut_continuation("no marker here", markers) == "no marker here"


def test_reference_scores_empty_responses_zero_as_training_does():
    """The encoder puts "" close to many answers (0.82 raw, 0.88 calibrated seen): an empty response
    earns nothing, as in training's reward."""
    class Runner:
        cand = types.SimpleNamespace(name="m")

        def generate(self, prompts, key):
            return [" \n", "Brezen."]

    class Rewards:
        def score(self, texts, *args):
            parts = {"calibrated": [0.88, 0.9], "similarity": [0.82, 0.85], "gate": [0.0, 1.0]}
            return types.SimpleNamespace(predicted_language=[None, "de"],
                                         components={k: np.array(v) for k, v in parts.items()})

    builder = types.SimpleNamespace(tokens=lambda q, t: [1])
    items = [tasks.Item(id=str(i), language="de", question="q", answer="Brezen.") for i in range(2)]
    log = []
    recs = evaluate.eval_reference(Runner(), builder, Rewards(), items, None, None, log, [])
    assert [(g["similarity"], g["calibrated"]) for g in log] == [(0.0, 0.0), (0.85, 0.9)]
    table = {r["metric"]: r["value"] for r in recs}
    assert table["calibrated_similarity"] == pytest.approx(0.45) and table["raw_similarity"] == pytest.approx(0.425)


def test_results_are_printed_without_out(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recs = [{"model": "m", "task": "math", "metric": "accuracy", "language": "de", "value": 0.5, "n": 2}]
    evaluate.show_results(recs, [{"id": "1"}], [], None)
    assert "| de | 0.500 | 2 |" in capsys.readouterr().out and not list(tmp_path.iterdir())
    evaluate.show_results(recs, [{"id": "1"}], [], str(tmp_path / "eval"))
    assert "| de | 0.500 | 2 |" in capsys.readouterr().out and (tmp_path / "eval" / "results.md").exists()


def test_main_rejects_stray_arguments():
    """`evaluate --config ... W` (no --checkpoint) must not quietly evaluate the base model."""
    from absl import app
    with pytest.raises(app.UsageError, match=r"unexpected arguments: \['runs/demo'\]"):
        evaluate.main(["evaluate", "runs/demo"])


def test_swapped_model_flags_name_the_right_flag(swapped_model_folders):
    hf, wd = swapped_model_folders
    with pytest.raises(ValueError, match=re.escape(f"--checkpoint {hf} is a Hugging Face model folder") +
                       ".*" + re.escape(f"pass it as --hf_dir {hf}")):
        evaluate.restore_policy(str(hf))
    with pytest.raises(ValueError, match=re.escape(f"--hf_dir {wd} is a training workdir") +
                       ".*" + re.escape(f"pass it as --checkpoint {wd}")):
        evaluate.load_hf(str(wd), _eval_cfg(), mesh=None)


# ---------------------------------------------------------------------------------------------- judge
def test_judge_round_trip_counts_only_correct(tmp_path):
    rows = [{"model": "m", "id": str(i), "language": lang, "category": "food", "question": "q", "target": "t",
             "predicted_answer": "p"} for i, lang in enumerate(["zh", "zh", "zh", "hi"])]
    assert judge.export_requests(rows, tmp_path / "req.jsonl") == 4
    req = [json.loads(x) for x in (tmp_path / "req.jsonl").read_text().splitlines()]
    assert "Gold target: t" in req[0]["prompt"] and "CORRECT_BUT_WRONG_LANGUAGE" in req[0]["prompt"]
    grades = [{"id": "0", "grade": "A"}, {"id": "1", "output": "B. CORRECT_BUT_WRONG_LANGUAGE"},
              {"id": "2", "response": "**C**"}, {"id": "3", "grade": "NOT_ATTEMPTED"}]
    out = judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", grades))
    table = {(r["language"], r["metric"]): r["value"] for r in out}
    assert table[("zh", "accuracy")] == pytest.approx(1 / 3)
    assert table[("zh", "correct_but_wrong_language")] == pytest.approx(1 / 3)
    assert table[("zh", "incorrect")] == pytest.approx(1 / 3)
    assert table[("hi", "accuracy")] == 0.0 and table[("hi", "not_attempted")] == 1.0


def test_judge_import_errors(tmp_path):
    judge.export_requests([{"id": "0", "language": "zh", "question": "q", "target": "t", "predicted_answer": "p"},
                           {"id": "1", "language": "zh", "question": "q", "target": "t", "predicted_answer": "p"}],
                          tmp_path / "req.jsonl")
    with pytest.raises(ValueError, match="1 request.*no grade.*'1'"):
        judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [{"id": "0", "grade": "A"}]))
    with pytest.raises(ValueError, match="line 2 .*id='1'.*cannot read a grade"):
        judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [
            {"id": "0", "grade": "A"}, {"id": "1", "grade": "maybe"}]))
    with pytest.raises(ValueError, match="'9' is not among the exported requests"):
        judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [{"id": "9", "grade": "A"}]))
    with pytest.raises(ValueError, match="line 2: a second grade for id '0'"):
        judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [
            {"id": "0", "grade": "A"}, {"id": "0", "grade": "C"}, {"id": "1", "grade": "A"}]))
    # Two models asked the same id: a grade row must say which model it grades.
    judge.export_requests([{"model": m, "id": "c1", "language": "zh", "question": "q", "target": "t",
                            "predicted_answer": "p"} for m in ("base", "lrpo@6")], tmp_path / "req.jsonl")
    with pytest.raises(ValueError, match=r"line 1: id 'c1' was asked of 2 models \['base', 'lrpo@6'\]"):
        judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [{"id": "c1", "grade": "A"}]))
    out = judge.import_grades(tmp_path / "req.jsonl", _write_jsonl(tmp_path / "g.jsonl", [
        {"model": "base", "id": "c1", "grade": "C"}, {"model": "lrpo@6", "id": "c1", "grade": "A"}]))
    assert {(r["model"], r["value"]) for r in out if r["metric"] == "accuracy"} == {("base", 0.0), ("lrpo@6", 1.0)}


def test_models_with_one_folder_name_get_distinct_labels(tmp_path):
    """Every warm-start export is WORKDIR/hf: two of them must not share a results column."""
    paths = [tmp_path / "warmA" / "hf", tmp_path / "warmB" / "hf", tmp_path / "runs" / "demo", tmp_path / "warmA" / "hf"]
    assert evaluate.unique_labels(paths) == ["warmA/hf", "warmB/hf", "demo", "warmA/hf"]
    with pytest.raises(ValueError, match=r"--checkpoint runs/demo@best: the part after '@' must be a step number"):
        evaluate._train_workdir("runs/demo@best")


# ---------------------------------------------------------------------------------------------- tables
def test_report_writes_a_comparison_table(tmp_path):
    recs = [{"model": m, "task": "math", "metric": "accuracy", "language": lang, "value": v, "n": 10}
            for m, vals in (("base", (0.1, 0.3)), ("lrpo@6", (0.2, 0.5))) for lang, v in zip(("de", "ja"), vals)]
    paths = report.write(recs, tmp_path)
    md = paths["md"].read_text()
    assert "| language | base | lrpo@6 | n |" in md
    assert "| de | 0.100 | 0.200 | 10 |" in md and "| **mean** | 0.200 | 0.350 | |" in md
    assert "| lrpo@6 | 0.350 |" in md  # summary row
    assert paths["csv"].read_text().splitlines()[0] == "model,task,metric,language,value,n"
    assert json.loads(paths["json"].read_text()) == recs
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- end to end
def test_restore_policy_returns_the_trained_params(smoke_run):
    workdir, out = smoke_run
    cand = evaluate.restore_policy(str(workdir))
    assert cand.name == f"{workdir.name}@3" and cand.prompt_mode == "fewshot"
    for a, b in zip(jax.tree.leaves(cand.params), jax.tree.leaves(out["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    earlier = evaluate.restore_policy(f"{workdir}@1")
    assert earlier.name.endswith("@1")
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(earlier.params), jax.tree.leaves(cand.params)))


def test_restore_policy_reads_no_base_weights(smoke_run, monkeypatch):
    """The checkpoint supplies the weights: the base policy is asked for shapes only, and those
    shapes and dtypes are the trained policy's."""
    import ml_collections

    from lrpo_jax import policy as policy_lib
    workdir, out = smoke_run
    real = policy_lib.load_policy
    asked = []

    def record(cfg, seed=0, *, abstract=False):
        asked.append(abstract)
        return real(cfg, seed, abstract=abstract)

    monkeypatch.setattr(policy_lib, "load_policy", record)
    evaluate.restore_policy(str(workdir))
    assert asked == [True]
    pol = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())).policy
    shapes = real(pol, abstract=True)[2]
    trained = out["state"].params
    assert jax.tree.structure(shapes) == jax.tree.structure(trained)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(trained)):
        assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (b.shape, b.dtype)


def test_evaluate_cli_compares_base_and_checkpoint_on_mgsm(smoke_run, mgsm_dir, tmp_path):
    workdir, _ = smoke_run
    mc = _write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    care = tmp_path / "care.json"
    care.write_text(json.dumps([{"id": "c1", "language": "de", "question": "Was isst man?", "answer": "Brezen.",
                                 "culture_type": "food"}], ensure_ascii=False))
    out = tmp_path / "eval"
    arg = (f"mgsm={mgsm_dir},n=2,new_tokens=8,tasks=math+reference+mc,care={care},mc={mc},"
           f"policy=shipped:qwen25_tokenizer")
    cmd = [sys.executable, "-m", "lrpo_jax.evaluate", f"--config={REPO / 'configs' / 'evaluate.py'}:{arg}",
           "--config.languages=('de','ja')", "--config.policy.random_init=True",
           f"--config.policy.overrides={_smoke_overrides()!r}", "--baseline",
           f"--checkpoint={workdir}", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = json.loads((out / "results.json").read_text())
    models = {r["model"] for r in recs}
    assert models == {"base", f"{workdir.name}@3"}
    got = {(r["model"], r["task"], r["metric"], r["language"]) for r in recs}
    for m in models:
        for lang in ("de", "ja"):
            assert (m, "math", "accuracy", lang) in got and (m, "math", "compliance", lang) in got
        assert (m, "reference", "calibrated_similarity", "de") in got
        assert (m, "reference", "calibrated_similarity[food]", "de") in got
        assert (m, "mc", "accuracy", "de") in got and (m, "mc", "accuracy", "ja") in got
    assert all(r["n"] == 2 for r in recs if r["task"] == "math")
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert sum(g["task"] == "math" for g in gens) == 2 * 2 * 2  # models x languages x items
    req = [json.loads(x) for x in (out / "judge_requests.jsonl").read_text().splitlines()]
    assert len(req) == 2 and {r["model"] for r in req} == models
    assert "| language | base |" in (out / "results.md").read_text()
    # the judge's replies come back as a table through the same CLI
    grades = _write_jsonl(tmp_path / "grades.jsonl", [{"model": r["model"], "id": r["id"], "grade": "A"} for r in req])
    proc = subprocess.run([sys.executable, "-m", "lrpo_jax.evaluate", f"--judge_grades={grades}", f"--out={out}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    judged = json.loads((out / "judge.json").read_text())
    assert {(r["model"], r["metric"], r["value"]) for r in judged if r["metric"] == "accuracy"} == \
        {(m, "accuracy", 1.0) for m in models}


def _smoke_overrides():
    cfg = config_lib.load_sibling(str(REPO / "configs" / "common.py"), "smoke").get_config()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(cfg.policy.overrides).items()}


def test_evaluate_config_errors_name_the_key():
    cfg = _eval_cfg("tasks=math+essay")
    with pytest.raises(ValueError, match="config.tasks has unknown task"):
        evaluate.validate(cfg)
    with pytest.raises(ValueError, match="config.reference.path is empty"):
        evaluate.validate(_eval_cfg("tasks=reference"))
    cfg = _eval_cfg()
    cfg.decode.temperatur = 0.5
    with pytest.raises(KeyError, match="config.decode.temperatur"):
        evaluate.validate(cfg)


def test_forced_answer_languages_read_like_the_training_data():
    """config.math.answer_language takes codes or English names ('German' -> de); a bad one fails at
    validation, naming the key, before any model loads."""
    item = types.SimpleNamespace(language="ja")
    assert evaluate._targets(item, "question") == ["ja"]
    assert evaluate._targets(item, "English+German") == ["en", "de"]
    cfg = _eval_cfg()
    cfg.math.answer_language = "en,klingon"
    with pytest.raises(ValueError, match=r"'klingon' \(config.math.answer_language\)"):
        evaluate.validate(cfg)


def test_evaluate_set_up_errors_come_before_any_model_loads(tmp_path, mgsm_dir):
    """MGSM's languages by default, a URL --out, a CARE file with no row in config.languages and bad
    prompt settings: each a clear error (or default) before a model is loaded."""
    assert "ar" not in _eval_cfg(f"mgsm={mgsm_dir}").languages and "ar" in _eval_cfg().languages
    assert _eval_cfg("langs=de+hi").languages == ("de", "hi")
    with pytest.raises(ValueError, match=r"--out gs://bucket/eval: URLs"):
        evaluate.evaluate(_eval_cfg(), out="gs://bucket/eval")
    care = tmp_path / "care.json"
    care.write_text(json.dumps([{"id": "a", "language": "hi", "question": "q", "answer": "x"}]))
    with pytest.raises(ValueError, match=r"reference: no rows of .*care.json are in config.languages \['de', 'ja'\] "
                                         r"\(the file has \['hi'\]\)"):
        evaluate.evaluate(_eval_cfg(f"tasks=reference,care={care},langs=de+ja"))
    with pytest.raises(ValueError, match=r"config.reference.path is set but config.tasks=\('math',\) lacks 'reference'"):
        evaluate.evaluate(_eval_cfg(f"care={care}"))
    with pytest.raises(ValueError, match=r"config.prompt.chat_template='on'"):
        cfg = _eval_cfg()
        cfg.prompt.chat_template = "on"
        evaluate.evaluate(cfg)
