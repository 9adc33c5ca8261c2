"""The LRPO training loop: route -> prompts -> sample -> reward -> GRPO update -> router update.

One readable loop in labelled sections (big_vision style). Everything numeric is a pure function
of pytrees under `jax.jit`; the host only handles text (tokenising, detokenising, language ID).
All state lives in one `TrainState` (policy, optimizer, router, rng, step) that orbax saves whole,
together with the data iterator position, so a killed run resumes bit-for-bit.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrpo_jax import checkpoint, compile_cache, config_lib, metrics as metrics_lib, parallel, policy as policy_lib
from lrpo_jax import router as router_lib
from lrpo_jax import router_log, vocab
from lrpo_jax.data import iterator as iterator_lib
from lrpo_jax.data import prompts as prompts_lib
from lrpo_jax.data import sources
from lrpo_jax.data.schema import DataError
from lrpo_jax.models import shipped
from lrpo_jax.rewards import calibration as calib_lib
from lrpo_jax.rewards.combine import RewardModel
from lrpo_jax.rewards.lid import LanguageID
from lrpo_jax.rewards.similarity import SimilarityModel
from lrpo_jax.rl import grpo
from lrpo_jax.rl.update import UpdateConfig, make_optimizer, make_update
from lrpo_jax.sampling import buckets
from lrpo_jax.sampling.processing import SamplingParams
from lrpo_jax.sampling.sampler import Sampler, SamplerSpec
from lrpo_jax.state import TrainState


# ==================================================================================================
# Reward set-up: encoder, language ID, calibration table (built once and cached when "auto").
# ==================================================================================================
def auto_table_path(encoder: str, languages, table_items: int, max_length: int, pooling: str):
    """Where reward.table='auto' caches its table (no suffix): keyed by everything that changes the
    similarities behind it, so a run never reads a table built for another set-up."""
    key = json.dumps([encoder, sorted(languages), table_items, max_length, pooling])
    return shipped.cache_root() / "calibration" / f"gsm_symbolic-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def calibration_table(cfg, similarity: SimilarityModel, languages, progress: bool = True):
    from lrpo_jax import calibrate
    if cfg.reward.calibration == "raw":
        return None
    if cfg.reward.table != "auto":
        table = calib_lib.load(cfg.reward.table)
        check_table_encoder(table, cfg.reward.encoder, cfg.reward.pooling, f"config.reward.table={cfg.reward.table}",
                            max_length=cfg.reward.max_length)
        return table
    r = cfg.reward
    path = auto_table_path(r.encoder, languages, r.table_items, r.max_length, r.pooling)
    if path.with_suffix(".npz").exists():
        return calib_lib.load(path)
    print(f"building the calibration table for {sorted(languages)} from multilingual-gsm-symbolic "
          f"(once; cached at {path})", flush=True)
    rows = sources.gsm_symbolic_rows(sorted(languages), with_regions=False, max_items=cfg.reward.table_items)
    v = dict(languages=vocab.language_vocab(sorted(languages)), topics=vocab.topic_vocab(),
             regions=vocab.region_vocab())
    from lrpo_jax.data import schema
    examples, _ = schema.validate_rows(rows, **v)
    table = calibrate.build_table(similarity, examples, sorted(languages), progress=progress,
                                  provenance={"encoder": cfg.reward.encoder, "pooling": cfg.reward.pooling,
                                              "max_length": cfg.reward.max_length,
                                              "data": "multilingual-gsm-symbolic"})
    calib_lib.save(table, path)
    return table


def drop_long_prompts(examples, builder: prompts_lib.PromptBuilder, languages, cfg, skipped):
    """Checks at start-up that every example's prompt fits the largest of config.rollout.prompt_buckets
    in every language it can be asked to answer in (the router's and its own), instead of failing
    at the step that first draws it. With data.skip_bad_rows the offenders are dropped and counted
    (field 'prompt_length' in `skipped`); otherwise the first one is a DataError naming it."""
    if not cfg.rollout.prompt_buckets:
        return examples
    limit = max(cfg.rollout.prompt_buckets)
    targets = tuple(languages) if cfg.router.enabled else ()
    bad = builder.too_long(examples, targets, limit)
    if not bad:
        return examples
    if not cfg.data.get("skip_bad_rows", False):
        ex, lang, length = bad[0]
        raise DataError(f"example {ex.id!r}: its prompt is {length} tokens with answer language {lang} "
                        f"(prompt.mode={cfg.prompt.mode!r}), more than the largest of config.rollout.prompt_buckets "
                        f"({limit}); {len(bad)} example(s) are too long: shorten them, add a bigger bucket, or set "
                        f"data.skip_bad_rows=True to drop them")
    skipped["prompt_length"] += len(bad)
    ids = {ex.id for ex, _, _ in bad}  # unique: validate_rows rejects duplicate ids
    return [ex for ex in examples if ex.id not in ids]


def check_table_encoder(table: calib_lib.CalibrationTable, encoder: str, pooling: str, where: str,
                        max_length: int | None = None) -> None:
    """A table's similarity statistics belong to the encoder set-up that built it: another encoder
    or pooling gives other similarities, so using the table would mis-calibrate silently. Tables
    whose provenance names no pooling were built with mean pooling (the only builder option then).
    Another max_length changes only texts longer than the shorter one: a warning, not an error."""
    prov = json.loads(table.provenance or "{}")
    built = (prov.get("encoder"), prov.get("pooling", "mean"))
    if built[0] is not None and built != (encoder, pooling):
        raise ValueError(f"{where} was built with encoder {built[0]!r} and {built[1]} pooling, but this run uses "
                         f"config.reward.encoder={encoder!r} with reward.pooling={pooling!r}: rebuild the table "
                         f"(python -m lrpo_jax.calibrate) or use table='auto'")
    built_len = prov.get("max_length")
    if max_length is not None and built_len is not None and built_len != max_length:
        logging.warning("%s was built with max_length=%s and this run embeds with reward.max_length=%s: texts "
                        "longer than %s tokens score against statistics of truncated texts", where, built_len,
                        max_length, min(built_len, max_length))


# ==================================================================================================
# Config validation: every problem names its key.
# ==================================================================================================
def _choices_and_ranges(cfg) -> None:
    """Enumerated settings and numeric ranges, checked before anything loads: a typo must not
    surface only after the first sampling pass."""
    choices = {
        "data.source": ("gsm_symbolic", "mgsm", "parquet", "jsonl", "care_json"),
        "prompt.chat_template": ("auto", "never", "always"),
        "reward.pooling": ("mean", "cls"),
        "reward.calibration": ("raw", "mean", "quantile"),
        "reward.missing_pair": calib_lib.FALLBACKS,
        "reward.gate": ("hard", "soft", "none"),
        "rl.loss_agg": grpo.AGG_MODES,
        "rl.kl_type": grpo.KL_TYPES + tuple(k + "+" for k in grpo.KL_TYPES),
    }
    for key, allowed in choices.items():
        value = cfg[key.split(".")[0]][key.split(".")[1]]
        if value not in allowed:
            raise ValueError(f"config.{key}={value!r}; expected one of {tuple(allowed)}")
    ranges = {  # key: (low, high, low inclusive)
        "reward.gate_threshold": (0.0, 1.0, True),
        "rollout.K": (1, float("inf"), True), "rollout.temperature": (0.0, float("inf"), True),
        "rollout.top_p": (0.0, 1.0, False), "rollout.top_k": (0, float("inf"), True),
        "rl.clip_low": (0.0, 1.0, True), "rl.clip_high": (0.0, float("inf"), True),
        "total_steps": (1, float("inf"), True), "data.prompts_per_step": (1, float("inf"), True),
        "rollout.max_new_tokens": (1, float("inf"), True), "rl.ppo_epochs": (1, float("inf"), True),
        "rl.mini_batches": (1, float("inf"), True), "rl.micro_batch": (1, float("inf"), True),
        "rl.kl_coef": (0.0, float("inf"), True), "optim.lr": (0.0, float("inf"), True),
        "reward.similarity_weight": (0.0, float("inf"), True), "reward.answer_weight": (0.0, float("inf"), True),
        "ckpt.keep": (1, float("inf"), True), "ckpt.every": (0, float("inf"), True),  # keep=0: orbax deletes all
    }
    config_lib.check_ranges(cfg, ranges)
    router_lib.check_config(cfg.router)
    if not (cfg.reward.similarity_weight or cfg.reward.answer_weight):
        raise ValueError("config.reward.similarity_weight and reward.answer_weight are both 0: no reward to learn from")
    if not cfg.reward.similarity_weight and cfg.reward.calibration != "raw":
        raise ValueError(f"config.reward.similarity_weight=0 turns the similarity reward off, so nothing is calibrated: "
                         f"set config.reward.calibration='raw' too (got {cfg.reward.calibration!r})")
    if cfg.rl.clip_c <= 1:
        raise ValueError(f"config.rl.clip_c={cfg.rl.clip_c!r} must be > 1 (dual-clip bound on negative advantages)")
    if cfg.router.fixed_mix:
        if not cfg.router.enabled:
            raise ValueError("config.router.fixed_mix is set but config.router.enabled=False (every rollout in the "
                             "question's language) would ignore it")
        fixed_mix_probs(cfg.router.fixed_mix, vocab.language_vocab(tuple(cfg.router.languages)))


def validate(cfg: ml_collections.ConfigDict, num_devices: int) -> None:
    config_lib.check_keys(cfg, config_lib.base_config())
    _choices_and_ranges(cfg)
    K, P = cfg.rollout.K, cfg.data.prompts_per_step
    if not 0 <= cfg.router.K_on <= K:
        raise ValueError(f"config.router.K_on={cfg.router.K_on} must be within [0, config.rollout.K={K}]")
    rows = P * K
    if rows % cfg.rl.micro_batch:
        raise ValueError(f"config.rl.micro_batch={cfg.rl.micro_batch} must divide the {rows} rollouts per step "
                         f"(data.prompts_per_step x rollout.K)")
    if rows % cfg.rl.mini_batches or (rows // cfg.rl.mini_batches) % cfg.rl.micro_batch:
        raise ValueError(f"config.rl.mini_batches={cfg.rl.mini_batches} must split {rows} rows into multiples of "
                         f"rl.micro_batch={cfg.rl.micro_batch}")
    mesh = dict(cfg.mesh)
    data_par = num_devices // (mesh.get("tensor", 1) if mesh.get("tensor", 1) > 0 else 1)
    if rows % max(data_par, 1) or cfg.rl.micro_batch % max(data_par, 1):
        raise ValueError(f"{rows} rollouts per step and config.rl.micro_batch={cfg.rl.micro_batch} must be divisible "
                         f"by the {data_par} data-parallel devices of config.mesh={mesh}")
    # One spelling everywhere: ids, LID labels, file names.
    for key, langs in (("router.languages", cfg.router.languages), ("data.languages", cfg.data.languages)):
        for lang in langs:
            code = vocab.normalize_language(lang, f"config.{key}")
            if code != lang:
                raise ValueError(f"config.{key} has {lang!r}: write ISO 639-1 codes in configs ({code!r})")
    missing = [lang for lang in cfg.data.languages if lang not in cfg.router.languages]
    if missing:
        raise ValueError(f"config.data.languages {missing} are not router arms (config.router.languages)")
    prompts_lib.check_languages(cfg.router.languages, cfg.prompt.mode)
    if not 0 <= cfg.reward.online_rate <= 1:
        raise ValueError(f"config.reward.online_rate={cfg.reward.online_rate} must be within [0, 1]")
    if cfg.reward.online_rate and cfg.reward.calibration != "mean":
        raise ValueError(f"config.reward.online_rate > 0 adapts pair means, so it needs config.reward.calibration="
                         f"'mean' (got {cfg.reward.calibration!r})")


# Settings a checkpoint's arrays depend on: the policy's shapes and the router's vocabularies (a
# different language list of the same length would silently relabel the learned A/B columns).
RESUME_FIXED = ("policy", "router.languages", "router.topics", "router.regions", "router.regional_topics")
# Zero vs non-zero changes the optimizer state's structure (a clipping / schedule-count stage), which
# the checkpoint could not be restored into: refused like RESUME_FIXED; other values may change.
RESUME_ON_OFF = ("optim.warmup_steps", "optim.grad_clip")


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def check_resume_config(workdir: pathlib.Path, cfg, fixed_keys=RESUME_FIXED, report: bool = True) -> dict:
    """Compares the config a workdir's checkpoints were written with (its config.json) against this
    run's. Raises, naming the keys, if a `fixed_keys` setting changed; logs (if `report`) and returns
    the other changes ({key: (old, new)}, e.g. total_steps). {} for a fresh workdir."""
    saved, ckpts = workdir / "config.json", workdir / "checkpoints"
    if not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        return {}
    if not saved.exists():
        raise ValueError(f"{workdir} holds checkpoints but no config.json, so nothing says which set-up they "
                         f"belong to: put its config.json back, or train in a new --workdir")
    try:
        old = _flat(json.loads(saved.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{saved} is not valid JSON ({e}): put the run's config back, or train in a new --workdir")
    new = _flat(json.loads(cfg.to_json_best_effort()))
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    fixed = [k for k in changed if any(k == f or k.startswith(f + ".") for f in fixed_keys)
             or (k in RESUME_ON_OFF and bool(changed[k][0]) != bool(changed[k][1]))]
    if fixed:
        raise ValueError(f"{workdir} holds checkpoints of another set-up: "
                         + "; ".join(f"config.{k} was {changed[k][0]!r}, now {changed[k][1]!r}" for k in fixed)
                         + ". Resume with the same settings, or train in a new --workdir")
    if changed and report:
        logging.warning("resuming %s with changed settings: %s", workdir,
                        "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return changed


# ==================================================================================================
# Training.
# ==================================================================================================
def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    # ---------------------------------------------------------------------------------- set-up
    parallel.maybe_initialize_distributed()
    compile_cache.enable(cfg.compile_cache)
    workdir = checkpoint.local_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    validate(cfg, jax.device_count())
    taught = policy_lib.taught_prompt(cfg.policy.source)
    for key in ("mode", "chat_template"):  # a tag-taught policy prompted few-shot learns from noise
        if taught[key] and taught[key] != cfg.prompt[key]:
            raise ValueError(f"config.policy.source={cfg.policy.source} is a warm-start export taught with "
                             f"prompt.{key}={taught[key]!r} (its {policy_lib.PROMPT_FILE}), but config.prompt.{key}="
                             f"{cfg.prompt[key]!r}: pass --config.prompt.{key}={taught[key]} (or delete that file to "
                             f"train with other prompts)")
    mesh = parallel.make_mesh(tuple(tuple(a) for a in cfg.mesh))
    parallel.log_mesh(mesh)
    compiles = metrics_lib.CompileCounter()
    check_resume_config(workdir, cfg, report=lead)
    if lead:  # only after the check: the workdir's config.json must keep describing its checkpoints
        write_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2))
    K, K_on, P = cfg.rollout.K, cfg.router.K_on, cfg.data.prompts_per_step
    N = cfg.rollout.max_new_tokens

    # ---------------------------------------------------------------------------------- policy
    dcfg, graphdef, params, tokenizer = policy_lib.load_policy(cfg.policy, cfg.seed)
    param_sh = parallel.param_shardings(params, mesh)
    for note in parallel.describe(params, mesh):
        logging.info("replicated (not divisible): %s", note)
    params = jax.device_put(params, param_sh)
    ref_params = jax.tree.map(jnp.copy, params) if cfg.rl.kl_coef else None  # frozen reference policy
    optimizer = make_optimizer(cfg.optim.lr, weight_decay=cfg.optim.weight_decay, b1=cfg.optim.b1, b2=cfg.optim.b2,
                               eps=cfg.optim.eps, grad_clip=cfg.optim.grad_clip, warmup_steps=cfg.optim.warmup_steps)
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_sh = parallel.tree_shardings_like(opt_abstract, params, param_sh, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    eos = policy_lib.eos_ids(dcfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampler = Sampler(graphdef, dcfg, SamplerSpec(max_new_tokens=N, eos_ids=eos, pad_id=pad_id,
                                                  prompt_buckets=tuple(cfg.rollout.prompt_buckets)), mesh=mesh)
    builder = prompts_lib.PromptBuilder(tokenizer, mode=cfg.prompt.mode, chat_template=cfg.prompt.chat_template)

    # ---------------------------------------------------------------------------------- rewards
    languages = tuple(cfg.router.languages)
    lid = LanguageID(languages)
    similarity = None
    if cfg.reward.similarity_weight:
        similarity = SimilarityModel.from_folder(shipped.resolve(cfg.reward.encoder), max_length=cfg.reward.max_length,
                                                 length_buckets=tuple(cfg.reward.length_buckets),
                                                 pooling=cfg.reward.pooling)
    table = calibration_table(cfg, similarity, languages, progress=lead) if similarity is not None else None
    rewards = RewardModel(similarity, lid, table, calibration=cfg.reward.calibration, gate=cfg.reward.gate,
                          gate_threshold=cfg.reward.gate_threshold, similarity_weight=cfg.reward.similarity_weight,
                          answer_weight=cfg.reward.answer_weight, missing_pair=cfg.reward.missing_pair,
                          languages=languages)

    # ---------------------------------------------------------------------------------- data + router
    spec = router_lib.RouterSpec.from_config(cfg.router)
    examples, skipped = sources.load_examples(cfg.data, languages=spec.languages, topics=spec.topics,
                                              regions=spec.regions)
    examples = drop_long_prompts(examples, builder, spec.languages, cfg, skipped)
    if skipped:
        logging.warning("skipped bad rows by field: %s", dict(skipped))
    data = iterator_lib.PromptIterator(examples, P, seed=cfg.data.shuffle_seed)
    fixed_probs = None
    if cfg.router.fixed_mix:
        fixed_probs = fixed_mix_probs(cfg.router.fixed_mix, spec.languages)
    router_state = router_lib.init_state(spec, cfg.router.topic_prior or None, cfg.router.region_prior or None)
    rep = parallel.replicated(mesh)
    state = TrainState(step=jnp.int32(0), rng=jax.random.key_data(jax.random.key(cfg.seed)), params=params,
                       opt_state=opt_state, router=router_state)
    state = state.replace(step=jax.device_put(state.step, rep), rng=jax.device_put(state.rng, rep),
                          router=jax.device_put(state.router, rep))
    # Donation needs one buffer per leaf: identical zero arrays (Adam moments, router buffers) may
    # share a buffer after jit/constant folding, so give each leaf its own copy once.
    distinct = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  (one dispatch per leaf = one buffer each)
    state = state.replace(opt_state=distinct(state.opt_state), router=distinct(state.router),
                          step=distinct(state.step), rng=distinct(state.rng))
    state_sh = jax.tree.map(lambda x: x.sharding, state)

    # ---------------------------------------------------------------------------------- jitted programs
    ucfg = UpdateConfig(clip_low=cfg.rl.clip_low, clip_high=cfg.rl.clip_high, clip_c=cfg.rl.clip_c,
                        kl_coef=cfg.rl.kl_coef, kl_type=cfg.rl.kl_type, entropy_coef=cfg.rl.entropy_coef,
                        loss_agg=cfg.rl.loss_agg, global_mean=cfg.rl.global_token_mean, micro_batch=cfg.rl.micro_batch,
                        mini_batches=cfg.rl.mini_batches, ppo_epochs=cfg.rl.ppo_epochs)
    logp_fn = policy_lib.make_logp_fn(graphdef, N, temperature=cfg.rollout.temperature or 1.0,
                                      remat_logits=cfg.rl.logits_remat)
    update = make_update(logp_fn, optimizer, ucfg)
    forward_logp = jax.jit(policy_lib.batched_logp(logp_fn, cfg.rl.micro_batch))
    regional = spec.regional_topic_mask
    r = cfg.router

    def train_step(state: TrainState, batch: dict):
        adv = grpo.group_advantages(batch["rewards"], batch["valid"], norm_by_std=cfg.rl.norm_adv_by_std)
        upd = {k: batch[k] for k in ("tokens", "positions", "attn_mask", "response_mask")}
        upd["advantages"] = adv.reshape(-1)
        if cfg.rl.kl_coef:
            upd["ref_logp"] = batch["ref_logp"]
        if not ucfg.on_policy:
            upd["old_logp"] = batch["old_logp"]
        params, opt_state, m = update(state.params, state.opt_state, upd)
        rs = state.router
        if r.enabled and fixed_probs is None:
            rs = router_lib.observe_groups(rs, batch["topic"], batch["regions"], batch["langs"], batch["rewards"],
                                           batch["valid"], fixed_lang_mask=batch["fixed"], K_on=K_on,
                                           observe_quota=r.observe_quota, observe_fixed=r.observe_fixed)
            rs = router_lib.maybe_update(rs, rs.step, r.update_every, r.alpha, r.norm, regional,
                                         reference_compat=r.reference_compat, norm_eps=r.norm_eps,
                                         min_count=r.min_count)
        m["advantage_abs_mean"] = jnp.abs(adv).mean()
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, router=rs), m

    train_step = jax.jit(train_step, donate_argnums=(0,), out_shardings=(state_sh, rep))

    def route(router_state, enc, key, tau, eps):
        return router_lib.assign(router_state, enc["topic"], enc["regions"], enc["orig_lang"], enc["fixed"], key,
                                 K=K, K_on=K_on if r.enabled else K, tau=tau, eps=eps,
                                 regional_topic_mask=regional, fixed_probs=fixed_probs)

    route = jax.jit(route)

    # ---------------------------------------------------------------------------------- resume
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=cfg.ckpt.keep, every=cfg.ckpt.every)
    history: dict = {"first": None, "last": None}
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(checkpoint.abstract_like(state))
        data.restore(extra["data"])
        history = extra.get("history", history)
        if "calibration_mean" in extra:  # online calibration state lives beside the data position
            rewards.table = rewards.table.replace(mean=jnp.asarray(extra["calibration_mean"], jnp.float32))
        if lead:
            print(f"resumed from step {int(state.step)} ({ckpt.directory})", flush=True)
    start = int(state.step)
    if lead:  # rows logged after the restored checkpoint belong to steps that now run again
        for name in ("tensorboard/metrics.jsonl", "router.jsonl", "rollouts.jsonl"):
            metrics_lib.truncate_jsonl(workdir / name, start)

    # ---------------------------------------------------------------------------------- logging
    # restart_step even from 0: a run that crashed before its first checkpoint left event files too.
    writer = metrics_lib.MetricWriter(workdir / "tensorboard", enabled=lead, restart_step=start + 1)
    rlog = router_log.RouterLog(workdir / "router.jsonl", spec, max_keys=r.log_max_keys) if lead else None
    timer = metrics_lib.PhaseTimer()
    kill_at = int(os.environ.get("LRPO_TEST_SIGKILL_AT_STEP", "0"))  # exact-resume test hook
    bar = None
    if lead:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=start, desc="LRPO", unit="step", dynamic_ncols=True)

    # ---------------------------------------------------------------------------------- loop
    seen_buckets, seen_encoder_programs = set(), 0
    stopped_by = None
    # closing(): a save still in flight completes, and the writer flushes, on an error in a later step
    # too; inside StopRequest, so a SIGTERM during that last wait cannot kill the process mid-save.
    with checkpoint.StopRequest() as stop, contextlib.closing(ckpt), contextlib.closing(writer):
        for step in range(start, cfg.total_steps):
            t_step = time.perf_counter()
            batch_examples = data.next()
            state, (k_route, k_sample) = state.next_keys(2)
            tau, eps = router_lib.tau_eps(state.router.step, r)

            # --- route (pure, jitted)
            with timer("route"):
                enc = spec.encode([e.topic for e in batch_examples], [list(e.regions) for e in batch_examples],
                                  [e.language for e in batch_examples])
                langs = parallel.to_host(route(state.router, enc, k_route, tau, eps))  # [P, K]
            targets = [languages[i] for i in langs.reshape(-1)]
            rows = [batch_examples[i // K] for i in range(P * K)]

            # --- prompts (host: text)
            with timer("prompts"):
                prompt_ids = [builder.tokens(ex.question, tgt) for ex, tgt in zip(rows, targets)]
                longest = int(np.argmax([len(p) for p in prompt_ids]))
                length = buckets.pick_bucket(len(prompt_ids[longest]), cfg.rollout.prompt_buckets,
                                             f"prompt length of example {rows[longest].id!r} (answer language "
                                             f"{targets[longest]}, config.rollout.prompt_buckets)")
                p_tokens, p_mask = buckets.left_pad(prompt_ids, length, pad_id)

            # --- sample (device)
            with timer("sample"):
                sp = SamplingParams.make(P * K, cfg.rollout.temperature, cfg.rollout.top_k, cfg.rollout.top_p)
                out = sampler.generate(state.params, p_tokens, k_sample, sp, prompt_mask=p_mask)
            texts = [tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(out.tokens, out.lengths)]

            # --- reward (host LID + device embeddings/calibration)
            with timer("reward"):
                if rewards.refs is not None:
                    rewards.refs._cache.clear()  # per-step: rewards must not depend on cache history (exact resume)
                res = rewards.score(texts, targets, [e.id for e in rows], [e.answer for e in rows],
                                    [e.language for e in rows], [e.numeric_answer for e in rows])
                res = same_on_every_process(res)
                rewards.adapt(res, [e.language for e in rows], targets, cfg.reward.online_rate)

            # --- update (device: GRPO + KL, router observe/EMA inside the same jitted step)
            with timer("update"):
                batch = policy_lib.assemble(p_tokens, p_mask, out.tokens, out.mask)
                valid = rollout_valid(res, P, K)
                batch.update(rewards=res.reward.reshape(P, K), valid=valid, langs=langs,
                             topic=enc["topic"], regions=enc["regions"], fixed=enc["fixed"])
                per_row = {k: batch.pop(k) for k in ("tokens", "positions", "attn_mask", "response_mask")}
                batch = {**parallel.shard_batch(per_row, mesh), **jax.device_put(batch, rep)}
                if cfg.rl.kl_coef:
                    batch["ref_logp"] = forward_logp(ref_params, batch)
                if not ucfg.on_policy:
                    batch["old_logp"] = forward_logp(state.params, batch)
                state, m = train_step(state, batch)
                m = parallel.to_host(m)

            # --- metrics, logs, checkpoints
            step_time = time.perf_counter() - t_step
            summary = step_summary(res, targets, rows, out, m, timer.pop(), step_time, compiles.count)
            # Bucketed shapes: a step may compile once for a prompt or encoder bucket it is the first to
            # use (bounded by the bucket count); any other compilation after warm-up is a bug.
            enc_programs = similarity.num_compiles() if similarity is not None else 0
            new_bucket = length not in seen_buckets or enc_programs > seen_encoder_programs
            seen_buckets.add(length)
            seen_encoder_programs = enc_programs
            summary["scalars"].update({"shape/prompt_bucket": length, "shape/new_bucket": float(new_bucket)})
            history["last"] = summary["by_language"]
            if history["first"] is None:
                history["first"] = summary["by_language"]
            if lead:
                writer.scalars(step + 1, summary["scalars"])
                if (r.log_every and (step + 1) % r.log_every == 0) or step + 1 == cfg.total_steps:
                    tau_now, eps_now = (float(x) for x in router_lib.tau_eps(state.router.step, r))
                    rlog.write(state.router, tau_now, eps_now, step=step + 1)
                    if (cfg.log.heatmaps_every and (step + 1) % cfg.log.heatmaps_every == 0) \
                            or step + 1 == cfg.total_steps:
                        for name, (mat, rws, cols) in router_log.heatmaps(spec, state.router, tau_now, eps_now).items():
                            writer.image(step + 1, name, metrics_lib.heatmap(mat, rws, cols, name))
                if cfg.log.rollouts_every and (step + 1) % cfg.log.rollouts_every == 0:
                    writer.text(step + 1, "rollouts", rollout_table(rows, targets, texts, res, cfg.log.rollouts_shown))
                    adv = grpo.group_advantages(jnp.asarray(res.reward.reshape(P, K)), jnp.asarray(valid),
                                                norm_by_std=cfg.rl.norm_adv_by_std)
                    metrics_lib.append_jsonl(workdir / "rollouts.jsonl",
                                             rollout_records(step + 1, K, rows, targets, texts, res, np.asarray(adv)))
                writer.flush()
                bar.set_postfix(reward=f"{summary['scalars']['reward/mean']:.3f}",
                                comply=f"{summary['scalars']['compliance/mean']:.2f}",
                                tok_s=f"{summary['scalars']['throughput/sample_tokens_per_s']:.0f}")
                bar.update(1)
            done = step + 1 == cfg.total_steps
            # A signal reaches each process on its own: agree before the collective save, or one
            # process would save while another went on to the next step's collectives (a hang).
            stopping = parallel.any_process(stop.requested)
            if ckpt.should_save(step + 1) or done or stopping:
                extra = {"data": data.state(), "history": history}
                if cfg.reward.online_rate:
                    extra["calibration_mean"] = np.asarray(rewards.table.mean).tolist()
                ckpt.save(step + 1, state, extra)
                if kill_at and step + 1 == kill_at:
                    ckpt.wait()
                    os.kill(os.getpid(), 9)
            if stopping and not done:  # a request during the last step: the run is complete anyway
                stopped_by = int(stop.signal or signal.SIGTERM)  # another process got it: stop as for SIGTERM
                logging.warning("stopping at step %d on request; resume with the same command", step + 1)
                break
    if bar is not None:
        bar.close()
    final = {"step": int(state.step), "total_steps": cfg.total_steps, "stopped_by": stopped_by,
             "history": history, "workdir": str(workdir),
             "router": router_log.log_record(spec, state.router, *(float(x) for x in router_lib.tau_eps(state.router.step, r)))}
    if lead:
        print_summary(final, spec, languages)
    return {"state": state, **final}


# ==================================================================================================
# Helpers.
# ==================================================================================================
def write_atomic(path: pathlib.Path, text: str) -> None:
    """A crash mid-write leaves the old file, never half a new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def same_on_every_process(res):
    """Each process scores every rollout on its own devices; the rewards then go onto the mesh as one
    replicated array, which must hold the same values everywhere. Process 0's numbers are broadcast so
    that holds even on mixed hardware, where encoder floats may differ in the last bits (and with them
    the online calibration, which adapts from the similarities). A no-op on one process."""
    if jax.process_count() == 1:
        return res
    from jax.experimental import multihost_utils
    arrays = {"reward": res.reward, "similarity_ok": res.similarity_ok.astype(np.int32), **res.components}
    arrays = multihost_utils.broadcast_one_to_all(arrays)
    return dataclasses.replace(res, reward=np.asarray(arrays.pop("reward")),
                               similarity_ok=np.asarray(arrays.pop("similarity_ok")).astype(bool),
                               components={k: np.asarray(v) for k, v in arrays.items()})


def rollout_valid(res, P: int, K: int) -> np.ndarray:
    """f32 [P, K]: 0 for a rollout whose similarity was not finite (an encoder failure, counted as
    `reasons/nan_similarity`): its reward is unknown, not 0, so it leaves its GRPO group's statistics
    (advantage 0) and the router does not learn from it."""
    return np.asarray(res.similarity_ok, np.float32).reshape(P, K)


def fixed_mix_probs(mix: str, languages) -> np.ndarray:
    """"own:0.75,en:0.25" -> probabilities over [languages..., own, others] for fixed-mix baselines:
    "own" is the question's language, "others" a mass spread evenly over every other language."""
    probs = np.zeros(len(languages) + 2, np.float32)
    special = {"own": len(languages), "others": len(languages) + 1}
    for part in filter(None, (p.strip() for p in mix.split(","))):
        code, _, w = part.partition(":")
        idx = special[code.strip()] if code.strip() in special else languages.index(code.strip(), "config.router.fixed_mix")
        try:
            probs[idx] = float(w)
        except ValueError:
            raise ValueError(f"config.router.fixed_mix entry {part!r}: expected 'code:weight' with a number") from None
        if not np.isfinite(probs[idx]) or probs[idx] < 0:
            raise ValueError(f"config.router.fixed_mix entry {part!r}: weights must be finite and >= 0")
    if probs.sum() <= 0:
        raise ValueError(f"config.router.fixed_mix={mix!r} has no positive weight")
    return probs / probs.sum()


def step_summary(res, targets, rows, out, m, times, step_time, compiles) -> dict:
    by_lang = collections.defaultdict(lambda: {"reward": [], "gate": []})
    for t, rwd, g in zip(targets, res.reward, res.components["gate"]):
        by_lang[t]["reward"].append(float(rwd))
        by_lang[t]["gate"].append(float(g))
    by_topic = collections.defaultdict(list)
    for ex, rwd in zip(rows, res.reward):
        by_topic[ex.topic].append(float(rwd))
    tokens = int(out.lengths.sum())
    scalars = {"reward/mean": float(res.reward.mean()), "compliance/mean": float(res.components["gate"].mean()),
               "similarity/raw_mean": float(res.components["similarity"].mean()),
               "similarity/calibrated_mean": float(res.components["calibrated"].mean()),
               "answer/mean": float(res.components["answer"].mean()),
               "response/length_mean": float(out.lengths.mean()),
               "throughput/sample_tokens_per_s": tokens / max(times.get("time/sample", 1e-9), 1e-9),
               "time/step": step_time, "compiles": compiles, **times}
    for k, v in m.items():
        scalars[f"train/{k}"] = float(np.asarray(v))
    for lang, d in by_lang.items():
        scalars[f"reward/lang/{lang}"] = float(np.mean(d["reward"]))
        scalars[f"compliance/lang/{lang}"] = float(np.mean(d["gate"]))
        scalars[f"routed/lang/{lang}"] = len(d["reward"]) / len(targets)
    for topic, v in by_topic.items():
        scalars[f"reward/topic/{topic}"] = float(np.mean(v))
    for reason, n in res.reasons.items():
        scalars[f"reasons/{reason}"] = n / len(targets)
    compact = {lang: {"reward": round(float(np.mean(d["reward"])), 4), "compliance": round(float(np.mean(d["gate"])), 3),
                      "n": len(d["reward"])} for lang, d in sorted(by_lang.items())}
    return {"scalars": scalars, "by_language": compact}


def rollout_records(step, K, rows, targets, texts, res, adv) -> list[dict]:
    """One JSON row per rollout: what was asked, where it was routed, how it was judged."""
    c, flat_adv = res.components, adv.reshape(-1)

    def num(x):  # strict JSON: a NaN similarity (an encoder failure) is null, not a bare NaN
        x = float(x)
        return x if np.isfinite(x) else None

    return [{"step": step, "prompt": i // K, "rollout": i % K, "id": ex.id, "topic": ex.topic,
             "regions": list(ex.regions), "question_language": ex.language, "routed_language": targets[i],
             "lid_language": res.predicted_language[i], "gate": num(c["gate"][i]),
             "similarity": num(c["similarity"][i]), "calibrated": num(c["calibrated"][i]),
             "answer": num(c["answer"][i]), "reward": num(res.reward[i]), "advantage": num(flat_adv[i]),
             "response": texts[i]} for i, ex in enumerate(rows)]


def rollout_table(rows, targets, texts, res, shown: int) -> str:
    lines = ["| question lang | routed | LID | gate | reward | response |", "|---|---|---|---|---|---|"]
    for i in range(min(shown, len(texts))):
        text = texts[i].replace("\n", " ").replace("|", "/")[:160]
        lines.append(f"| {rows[i].language} | {targets[i]} | {res.predicted_language[i]} | "
                     f"{res.components['gate'][i]:.0f} | {res.reward[i]:.3f} | {text} |")
    return "\n".join(lines)


def print_summary(final: dict, spec, languages) -> None:
    hist = final["history"]
    if final.get("stopped_by"):
        print(f"\n=== LRPO stopped at step {final['step']} of {final['total_steps']} on "
              f"{signal.Signals(final['stopped_by']).name}: checkpoint saved, resume with the same command ===")
    else:
        print(f"\n=== LRPO finished at step {final['step']} ===")
    if hist.get("first") and hist.get("last"):
        print("reward / compliance by routed language (first step -> last step):")
        for lang in sorted(set(hist["first"]) | set(hist["last"])):
            a, b = hist["first"].get(lang), hist["last"].get(lang)
            fmt = lambda d: f"{d['reward']:.3f} / {d['compliance']:.2f} (n={d['n']})" if d else "-"  # noqa: E731
            print(f"  {lang}: {fmt(a)}  ->  {fmt(b)}")
    print("router (effective routing probabilities per topic):")
    for key, row in final["router"]["probs"].items():
        if key.startswith("topic:"):
            top = sorted(row["effective"].items(), key=lambda kv: -kv[1])[:4]
            print(f"  {key[6:]}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    wd = final["workdir"]
    print(f"logs: {wd}/tensorboard (tensorboard --logdir {wd}/tensorboard), router JSONL {wd}/router.jsonl, "
          f"checkpoints {wd}/checkpoints")
