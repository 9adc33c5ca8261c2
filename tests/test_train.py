"""The trainer end to end on the smoke config: runs, validates configs, resumes exactly after SIGKILL."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from lrpo_jax import checkpoint, config_lib, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke(arg=""):
    import importlib.util
    spec = importlib.util.spec_from_file_location("smoke_cfg", REPO / "configs" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _rollouts(workdir):
    return [json.loads(x) for x in (pathlib.Path(workdir) / "rollouts.jsonl").read_text().splitlines()]


def _metrics(workdir):
    rows = [json.loads(x) for x in (pathlib.Path(workdir) / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(smoke_run):
    return smoke_run  # conftest: smoke config, steps=3, online=0.5


def test_smoke_run_writes_checkpoints_logs_and_router_jsonl(uninterrupted):
    workdir, out = uninterrupted
    assert out["step"] == 3
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2", "3"]
    records = [json.loads(x) for x in (workdir / "router.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "topic:Reasoning / Logic" in records[-1]["probs"]
    rows = _metrics(workdir)
    assert set(rows) == {1, 2, 3} and rows[3]["compiles"] == rows[2]["compiles"]  # no recompiles after warm-up
    assert rows[1]["shape/new_bucket"] == 1.0 and "shape/prompt_bucket" in rows[3]
    step1 = [r for r in _rollouts(workdir) if r["step"] == 1]
    for lang in {r["routed_language"] for r in step1}:  # per routed language: its rollouts' mean and share
        mine = [r["reward"] for r in step1 if r["routed_language"] == lang]
        assert rows[1][f"reward/lang/{lang}"] == pytest.approx(np.mean(mine), abs=1e-4), lang
        assert rows[1][f"routed/lang/{lang}"] == pytest.approx(len(mine) / len(step1)), lang
    routed = {f"routed/lang/{r['routed_language']}" for r in step1}
    assert {k for k in rows[1] if k.startswith("routed/lang/")} == routed
    assert int(out["state"].router.updates) == 1  # update_every=2 over 3 steps
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert {"router/topic_x_language", "router/region_x_language"} <= set(acc.Tags()["images"])
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    _, extra = ckpt.restore(checkpoint.abstract_like(out["state"]))
    ckpt.close()
    assert np.asarray(extra["calibration_mean"]).shape == (4, 4)  # online calibration state is checkpointed
    rollouts = _rollouts(workdir)
    assert len(rollouts) == 3 * 2 * 4 and {r["step"] for r in rollouts} == {1, 2, 3}  # steps x P x K
    for step in (1, 2, 3):
        for p in (0, 1):
            group = [r for r in rollouts if r["step"] == step and r["prompt"] == p]
            rewards = np.array([r["reward"] for r in group])
            adv = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)  # verl GRPO, unbiased std
            np.testing.assert_allclose([r["advantage"] for r in group], adv, atol=1e-5)
            assert len({r["question_language"] for r in group}) == 1


def test_exact_resume_after_sigkill(uninterrupted, tmp_path):
    """N=3 steps uninterrupted == 1 step, SIGKILL, resume, 2 more steps: bit-identical params,
    router state and per-step metrics."""
    full_dir, full = uninterrupted
    env = {**os.environ, "LRPO_TEST_SIGKILL_AT_STEP": "1"}
    proc = subprocess.run([sys.executable, "-m", "lrpo_jax.train", "--config", str(REPO / "configs" / "smoke.py") + ":steps=3,online=0.5",
                           "--workdir", str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    resumed = trainer.train(_smoke("steps=3,online=0.5"), str(tmp_path))
    assert jax.tree.structure(full["state"]) == jax.tree.structure(resumed["state"])
    for a, b in zip(jax.tree.leaves(full["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want, got = _metrics(full_dir), _metrics(tmp_path)
    for step in (1, 2, 3):
        for key in ("reward/mean", "compliance/mean", "train/loss", "train/grad_norm"):
            assert got[step][key] == want[step][key], (step, key)
    assert _rollouts(tmp_path) == _rollouts(full_dir)  # same routes, responses, rewards, advantages


@pytest.mark.parametrize("override,message", [
    (lambda c: c.router.__setattr__("K_on", 9), r"config.router.K_on=9 must be within \[0, config.rollout.K=4\]"),
    (lambda c: c.rl.__setattr__("micro_batch", 3), r"config.rl.micro_batch=3 must divide the 8 rollouts"),
    (lambda c: c.data.__setattr__("languages", ("de", "sw")), r"config.data.languages \['sw'\] are not router arms"),
    (lambda c: c.router.__setattr__("languages", ("german", "en", "fr", "ja")),
     r"config.router.languages has 'german': write ISO 639-1 codes in configs \('de'\)"),
    (lambda c: c.data.__setattr__("languages", ("de", "klingon")), r"unknown language 'klingon' \(config.data.languages\)"),
    (lambda c: c.rollout.__setattr__("temprature", 0.7), r"unknown config key 'config.rollout.temprature'"),
    (lambda c: c.prompt.__setattr__("mode", "magic"), r"prompt.mode='magic'"),
    # Enumerations and ranges are checked at start-up, not at first use after a sampling pass.
    (lambda c: c.router.__setattr__("norm", "z"), r"config.router.norm='z'; expected one of"),
    (lambda c: c.rl.__setattr__("kl_type", "k4"), r"config.rl.kl_type='k4'; expected one of"),
    (lambda c: c.reward.__setattr__("gate", "maybe"), r"config.reward.gate='maybe'"),
    (lambda c: c.reward.__setattr__("pooling", "max"), r"config.reward.pooling='max'"),
    (lambda c: c.router.__setattr__("alpha", 0.0), r"config.router.alpha=0.0 must be within \(0.0, 1.0\]"),
    (lambda c: c.router.__setattr__("eps_init", 1.5), r"config.router.eps_init=1.5 must be within"),
    (lambda c: c.rl.__setattr__("clip_c", 0.5), r"config.rl.clip_c=0.5 must be > 1"),
    (lambda c: c.ckpt.__setattr__("keep", 0), r"config.ckpt.keep=0 must be within \[1, inf\]"),  # orbax kept none
    # values that used to fail late (an empty argmax, a dynamic_update_slice shape, a None .items())
    # or train silently (a negative lr or KL coefficient)
    (lambda c: c.data.__setattr__("prompts_per_step", 0), r"config.data.prompts_per_step=0 must be within \[1, inf\]"),
    (lambda c: c.rollout.__setattr__("max_new_tokens", 0), r"config.rollout.max_new_tokens=0 must be within"),
    (lambda c: c.rl.__setattr__("ppo_epochs", 0), r"config.rl.ppo_epochs=0 must be within"),
    (lambda c: c.optim.__setattr__("lr", -0.1), r"config.optim.lr=-0.1 must be within \[0.0, inf\]"),
    (lambda c: c.rl.__setattr__("kl_coef", -1.0), r"config.rl.kl_coef=-1.0 must be within"),
    (lambda c: (c.reward.__setattr__("similarity_weight", 0.0), c.reward.__setattr__("answer_weight", 1.0)),
     r"similarity_weight=0 turns the similarity reward off.*calibration='raw'"),
    (lambda c: c.reward.__setattr__("similarity_weight", 0.0), r"both 0: no reward to learn from"),
    (lambda c: c.router.__setattr__("fixed_mix", "own:0.5,en:-0.2,de:0.1"), r"entry 'en:-0.2': weights must be"),
    (lambda c: c.router.__setattr__("fixed_mix", "own:0.5,en:"), r"entry 'en:': expected 'code:weight'"),
    (lambda c: (c.router.__setattr__("fixed_mix", "own:1"), c.router.__setattr__("enabled", False)),
     r"fixed_mix is set but config.router.enabled=False"),
])
def test_config_validation_names_the_key(override, message):
    cfg = _smoke()
    override(cfg)
    with pytest.raises((ValueError, KeyError), match=message):
        trainer.validate(cfg, num_devices=8)


def test_every_shipped_config_builds_and_validates():
    import importlib.util
    checked = []
    for path in sorted((REPO / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if not hasattr(mod, "get_config") or path.name in ("router_sim.py", "calibrate.py"):
            continue  # shared modules and non-training configs
        if path.name == "evaluate.py":
            from lrpo_jax import evaluate
            evaluate.validate(mod.get_config())
            continue
        if path.name == "sample.py":
            config_lib.check_keys(mod.get_config("lang=de+ja"), mod.get_config())
            continue
        if path.name == "warmstart.py":
            cfg = mod.get_config()
            config_lib.check_keys(cfg, mod.get_config())
            assert cfg.warmstart.batch_size % cfg.warmstart.micro_batch == 0
            continue
        for variant in getattr(mod, "VARIANTS", (None,)):
            cfg = mod.get_config(variant)
            trainer.validate(cfg, num_devices=1)
            checked.append((path.name, variant))
    assert len(checked) >= 2 + 3 * 11  # smoke, demo, and 3 paper models x 11 variants
    with pytest.raises(KeyError, match="unknown config argument 'stepz'"):
        _smoke("stepz=2")
    config_lib.check_keys(_smoke(), config_lib.base_config())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_training_matches_one_process(uninterrupted, tmp_path):
    """2 JAX processes x 4 CPU devices (gloo) run the smoke config like 1 process x 8 devices."""
    full_dir, _ = uninterrupted
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPO_COORD")}
    env.update(NPROC="2", DEVICES="4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", "launch/local_multiprocess.sh", sys.executable, "-m", "lrpo_jax.train", "--config",
                           "configs/smoke.py:steps=3", "--workdir", str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    want, got = _metrics(full_dir), _metrics(tmp_path)
    assert set(got) == {1, 2, 3}
    for key in ("reward/mean", "compliance/mean", "train/loss", "train/grad_norm"):
        assert got[1][key] == pytest.approx(want[1][key], rel=1e-5, abs=1e-7), key


def test_over_long_prompts_are_caught_at_start_up():
    """A prompt longer than every prompt bucket is an error naming its example before any step runs
    (or, with data.skip_bad_rows, a dropped and counted row), not a crash at the step that draws it."""
    import collections

    from transformers import AutoTokenizer

    from lrpo_jax.data import prompts, schema
    from lrpo_jax.models import shipped
    cfg = _smoke()
    builder = prompts.PromptBuilder(AutoTokenizer.from_pretrained(str(shipped.qwen25_tokenizer_dir())),
                                    mode=cfg.prompt.mode, chat_template=cfg.prompt.chat_template)
    mk = lambda i, q: schema.Example(id=i, question=q, answer="1", topic="Reasoning / Logic", regions=(),  # noqa: E731
                                     language="de", pair_id=None)
    exs = [mk("short", "Wie alt ist Anna?"), mk("long-1", "Anna hat drei Äpfel. " * 40), mk("ok", "Wie viele?")]
    limit = max(len(builder.tokens("Wie alt ist Anna?", t)) for t in cfg.router.languages) + 8
    cfg.rollout.prompt_buckets = (limit,)
    with pytest.raises(schema.DataError, match=rf"example 'long-1': its prompt is \d+ tokens with answer language "
                                               rf"\w+ .*prompt_buckets \({limit}\); 1 example\(s\)"):
        trainer.drop_long_prompts(exs, builder, cfg.router.languages, cfg, collections.Counter())
    cfg.data.skip_bad_rows = True
    skipped = collections.Counter()
    kept = trainer.drop_long_prompts(exs, builder, cfg.router.languages, cfg, skipped)
    assert [ex.id for ex in kept] == ["short", "ok"] and skipped == {"prompt_length": 1}


def test_a_rollout_without_a_finite_similarity_leaves_its_group():
    """A NaN similarity (an encoder failure) makes the reward unknown: the rollout is invalid for
    GRPO's group statistics and for the router, instead of counting as a reward of 0."""
    import types

    from lrpo_jax.rl import grpo
    res = types.SimpleNamespace(similarity_ok=np.array([True, True, False, True]),
                                reward=np.array([1.0, 0.0, 0.0, 0.5], np.float32))
    valid = trainer.rollout_valid(res, 2, 2)
    np.testing.assert_array_equal(valid, [[1, 1], [0, 1]])
    adv = np.asarray(grpo.group_advantages(res.reward.reshape(2, 2), valid))
    assert adv[1, 0] == 0 and adv[1, 1] == pytest.approx(0.5 / (1 + 1e-6))  # a singleton group now


def test_resume_refuses_another_set_up_and_reports_other_changes(tmp_path):
    """A workdir's checkpoints belong to its config: resuming with other router languages (same count:
    the learned columns would be silently relabelled) or another policy shape is refused, naming the
    keys, before config.json is rewritten; other changes (more steps) are returned for the log."""
    cfg = _smoke()
    assert trainer.check_resume_config(tmp_path, cfg) == {}  # fresh workdir
    (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
    assert trainer.check_resume_config(tmp_path, cfg) == {}  # no checkpoint yet: nothing to protect
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    assert trainer.check_resume_config(tmp_path, cfg) == {}
    longer = _smoke("steps=6")
    assert trainer.check_resume_config(tmp_path, longer) == {"total_steps": (3, 6)}
    langs = list(cfg.router.languages)
    relabelled = _smoke()
    relabelled.router.languages = tuple(["ru" if x == "en" else x for x in langs])
    with pytest.raises(ValueError, match=r"another set-up: config.router.languages was .*'en'.*now .*'ru'"):
        trainer.check_resume_config(tmp_path, relabelled)
    deeper = _smoke()
    deeper.policy.overrides = {**deeper.policy.overrides, "num_layers": 3}
    with pytest.raises(ValueError, match=r"config.policy.overrides.num_layers was 2, now 3"):
        trainer.check_resume_config(tmp_path, deeper)
    # Warm-up or clipping switched on or off: another optimizer state structure. Other values may change.
    for key, value in (("warmup_steps", 5), ("grad_clip", 0.0)):
        other = _smoke()
        setattr(other.optim, key, value)
        with pytest.raises(ValueError, match=rf"config.optim.{key} was .*, now {value}"):
            trainer.check_resume_config(tmp_path, other)
    softer = _smoke()
    softer.optim.grad_clip = 0.5
    assert trainer.check_resume_config(tmp_path, softer) == {"optim.grad_clip": (1.0, 0.5)}
    # Checkpoints whose config.json is gone or half-written: refused, naming the file.
    (tmp_path / "config.json").write_text('{"seed": ')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is not valid JSON"):
        trainer.check_resume_config(tmp_path, cfg)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"holds checkpoints but no config.json"):
        trainer.check_resume_config(tmp_path, cfg)


def test_a_stopped_run_exits_as_killed_by_its_signal():
    """SIGTERM/SIGINT: checkpoint, a 'stopped' summary, and exit code 128 + signal (not 0, which a
    scheduler or sweep would read as finished)."""
    code = ("import sys; from absl import app; from lrpo_jax import train, trainer; "
            "trainer.train = lambda cfg, workdir: {'stopped_by': 15}; "
            "sys.argv = ['train', '--config', 'configs/smoke.py', '--workdir', '/nonexistent']; app.run(train.main)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        trainer.print_summary({"step": 5, "total_steps": 20, "stopped_by": 2, "history": {},
                               "router": {"probs": {}}, "workdir": "w"}, None, ())
    assert "stopped at step 5 of 20 on SIGINT: checkpoint saved" in buf.getvalue()


def test_a_url_workdir_is_refused_not_turned_into_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--workdir gs://bucket/runs/x: URLs .* not supported.*gcsfuse"):
        trainer.train(_smoke(), "gs://bucket/runs/x")
    assert not (tmp_path / "gs:").exists()


def test_training_a_warm_start_export_needs_its_prompt_mode(tmp_path):
    """An export remembers the prompt mode it was taught (lrpo_prompt.json); training it with another
    is an error naming both, before anything loads (it used to train a tag-taught policy few-shot)."""
    from lrpo_jax import policy as policy_lib
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / policy_lib.PROMPT_FILE).write_text('{"mode": "tag"}')
    assert policy_lib.taught_prompt(f"hf:{tmp_path / 'hf'}")["mode"] == "tag"
    assert policy_lib.taught_prompt("shipped:gemma3_270m")["mode"] == ""
    cfg = _smoke()
    cfg.policy.source, cfg.prompt.mode = f"hf:{tmp_path / 'hf'}", "fewshot"
    with pytest.raises(ValueError, match=r"taught with prompt.mode='tag'.*pass --config.prompt.mode=tag"):
        trainer.train(cfg, str(tmp_path / "run"))
    # The chat-template setting travels the same way (exports since it was recorded).
    (tmp_path / "hf" / policy_lib.PROMPT_FILE).write_text('{"mode": "tag", "chat_template": "never"}')
    cfg.prompt.mode = "tag"
    with pytest.raises(ValueError, match=r"prompt.chat_template='never'.*pass --config.prompt.chat_template=never"):
        trainer.train(cfg, str(tmp_path / "run"))


def test_evaluate_and_sample_prompt_a_model_as_it_was_trained(tmp_path):
    """prompt.mode 'auto' and chat_template 'trained' (evaluate/sample defaults) take the model's
    training settings, the base policy few-shot with 'auto'; explicit values win; bad ones fail early."""
    import ml_collections
    from lrpo_jax import policy as policy_lib
    (tmp_path / policy_lib.PROMPT_FILE).write_text('{"mode": "tag", "chat_template": "never"}')
    taught = policy_lib.taught_prompt(f"hf:{tmp_path}")
    assert taught == {"mode": "tag", "chat_template": "never"}
    assert policy_lib.prompt_settings("auto", "trained", taught["mode"], taught["chat_template"]) == ("tag", "never")
    assert policy_lib.prompt_settings("system", "always", "tag", "never") == ("system", "always")
    assert policy_lib.prompt_settings("auto", "trained", "", "") == ("fewshot", "auto")
    (tmp_path / policy_lib.PROMPT_FILE).write_text('{"mode": "tag"}')  # written before chat_template was
    assert policy_lib.taught_prompt(f"hf:{tmp_path}") == {"mode": "tag", "chat_template": ""}
    for bad, msg in (({"mode": "chat", "chat_template": "trained"}, r"config.prompt.mode='chat'; expected auto"),
                     ({"mode": "auto", "chat_template": "yes"}, r"config.prompt.chat_template='yes'; expected trained")):
        with pytest.raises(ValueError, match=msg):
            policy_lib.check_prompt_settings(ml_collections.ConfigDict(bad))


def test_an_error_in_a_later_step_keeps_the_checkpoint_being_written(tmp_path):
    """Step 1's checkpoint is saved in the background while step 2 runs; step 2 raising must not end
    the process before that save completes (it was left as 1.orbax-checkpoint-tmp, and resume fell
    back to an older step)."""
    script = (
        "import sys\n"
        "from lrpo_jax import config_lib, trainer\n"
        "from lrpo_jax.data import iterator\n"
        "calls = []\n"
        "real = iterator.PromptIterator.next\n"
        "def next_or_fail(self):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        raise RuntimeError('data source failed')\n"
        "    return real(self)\n"
        "iterator.PromptIterator.next = next_or_fail\n"
        f"cfg = config_lib.load_sibling({str(REPO / 'configs' / 'common.py')!r}, 'smoke').get_config('steps=3')\n"
        "cfg.ckpt.every = 1\n"
        "trainer.train(cfg, sys.argv[1])\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and "data source failed" in proc.stderr, proc.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "1" in names and not [n for n in names if "tmp" in n], names
