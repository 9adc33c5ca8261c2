"""The sampling CLI on a smoke checkpoint: every (question, language, sample) gets a labelled response."""
import json
import pathlib
import re
import subprocess
import sys
import types

import pytest

from lrpo_jax import config_lib, sample

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_sample_cli_on_a_training_checkpoint(smoke_run, tmp_path):
    workdir, _ = smoke_run
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"question": "Wie viel ist 2 + 3?", "language": "de", "target": "ja"}) + "\n" +
                  json.dumps({"question": "Combien font 2 + 3 ?", "language": "fr"}) + "\n")
    out = tmp_path / "samples.jsonl"
    proc = subprocess.run([sys.executable, "-m", "lrpo_jax.sample",
                           f"--config={REPO / 'configs' / 'sample.py'}:lang=de+en,n=2,new_tokens=8",
                           f"--checkpoint={workdir}", f"--prompts_file={qs}", f"--out={out}"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # row 1 names its target (ja) x 2 samples; row 2 uses config.languages (de, en) x 2 samples
    assert [r["requested_language"] for r in rows] == ["ja", "ja", "de", "de", "en", "en"]
    assert all(0 < r["tokens"] <= 8 for r in rows)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["prompts"] == 6 and stats["tokens_per_s"] > 0 and stats["kv_cache_mb"] > 0


def test_prompts_file_errors_name_the_row(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question": "ok"}) + "\n" + json.dumps({"language": "de"}) + "\n")
    cfg = config_lib.load_sibling(str(REPO / "configs" / "common.py"), "sample").get_config()
    with pytest.raises(ValueError, match="line 2: field 'question'"):
        sample.load_questions(cfg, prompts_file=str(bad))


def test_prompt_and_prompts_file_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--prompt or with --prompts_file, not both"):
        sample.load_questions(_cfg(), prompts=("Q?",), prompts_file=str(tmp_path / "q.jsonl"))


def test_kv_cache_formula():
    class C:
        num_layers, num_kv_heads, head_dim = 18, 1, 256  # Gemma-3-270M
    assert sample.kv_cache_bytes(C, batch=8, length=160) == 2 * 18 * 8 * 160 * 1 * 256 * 4


def _cfg(arg=None):
    return config_lib.load_sibling(str(REPO / "configs" / "common.py"), "sample").get_config(arg)


def test_languages_read_like_the_training_data(tmp_path):
    """English names as in the training data; unknown ones name the row/field or config key and the
    known languages, not a bare KeyError from the prompt texts."""
    from lrpo_jax.data.prompts import PromptBuilder
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"question": "a", "target": "German"}) + "\n" +
                  json.dumps({"question": "b", "language": "JA"}) + "\n")
    rows = sample.load_questions(_cfg(), prompts_file=str(qs))
    assert [(r.get("language"), r.get("target")) for r in rows] == [(None, "de"), ("ja", None)]
    qs.write_text(json.dumps({"question": "a"}) + "\n" + json.dumps({"question": "b", "target": "klingon"}) + "\n")
    with pytest.raises(ValueError, match=r"'klingon' \(.*line 2: field 'target'\).*prompt texts: \[.*'de'"):
        sample.load_questions(_cfg(), prompts_file=str(qs))
    with pytest.raises(ValueError, match=r"'xx' \(config.languages.*prompt texts: \[.*'de'"):
        sample.sample(_cfg("lang=de+xx"), prompts=("q",))
    builder = PromptBuilder(types.SimpleNamespace(chat_template=None), mode="fewshot")
    with pytest.raises(ValueError, match=r"answer language 'sv'; known languages: \[.*'de'"):
        builder.text("q", "sv")


def test_main_rejects_stray_arguments():
    """A question without --prompt must not quietly sample the built-in questions instead."""
    from absl import app
    with pytest.raises(app.UsageError, match="unexpected arguments: \\['some question'\\]"):
        sample.main(["sample", "some question"])


def test_swapped_model_folders_name_the_right_flag(swapped_model_folders):
    hf, wd = swapped_model_folders
    with pytest.raises(ValueError, match=re.escape(f"pass it as --config.policy.source=hf:{hf}")):
        sample.sample(_cfg(), prompts=("q",), checkpoint=str(hf))
    cfg = _cfg()
    cfg.policy.source = f"hf:{wd}"
    with pytest.raises(ValueError, match=re.escape(f"--config.policy.source=hf:{wd} is a training workdir") +
                       ".*" + re.escape(f"pass it as --checkpoint {wd}")):
        sample.sample(cfg, prompts=("q",))
