"""Sampling CLI: generate answers in requested languages with any policy, outside training.

    python -m lrpo_jax.sample --config configs/sample.py
    python -m lrpo_jax.sample --config configs/sample.py:lang=ja+en --prompt "Wie viele Tage hat ein Schaltjahr?"
    python -m lrpo_jax.sample --config configs/sample.py --checkpoint runs/demo --out samples.jsonl

Questions come from --prompt (repeatable), --prompts_file (JSONL with `question` and optional
`language`/`target`), or built-in multilingual-gsm-symbolic items. Each question is asked once per
answer language in `config.languages` (or the row's `target`), `config.samples` times, through
the same PromptBuilder and Sampler the trainer uses. `--checkpoint DIR` samples a training
workdir's latest policy (prompted the way it was trained).
"""
from __future__ import annotations

import json
import pathlib
import resource
import time

import jax
import numpy as np


def load_questions(cfg, prompts=(), prompts_file=None) -> list[dict]:
    if prompts and prompts_file:
        raise ValueError("give questions with --prompt or with --prompts_file, not both")
    if prompts:
        return [{"question": p, "language": None} for p in prompts]
    if prompts_file:
        from lrpo_jax.data import sources
        from lrpo_jax.data.prompts import language_code
        rows, lines = sources.read_jsonl_lines(prompts_file)
        for n, r in zip(lines, rows):  # errors name the 1-based line, as the training data's do
            if not str(r.get("question") or "").strip():
                raise ValueError(f"{prompts_file}: line {n}: field 'question' is missing or empty")
            for key in ("language", "target"):  # codes or English names, as in the training data
                if r.get(key):
                    r[key] = language_code(r[key], f"{prompts_file}: line {n}: field {key!r}")
        return rows
    from lrpo_jax.data import sources
    rows = sources.gsm_symbolic_rows(tuple(cfg.questions_from), with_regions=False,
                                     max_items=cfg.questions_per_language)
    return [{"question": r["question"], "language": r["language"]} for r in rows]


def kv_cache_bytes(dcfg, batch: int, length: int, dtype_bytes: int = 4) -> int:
    """K and V per layer: 2 x layers x batch x length x kv_heads x head_dim x bytes."""
    return 2 * dcfg.num_layers * batch * length * dcfg.num_kv_heads * dcfg.head_dim * dtype_bytes


def sample(cfg, *, prompts=(), prompts_file=None, checkpoint=None, out=None) -> list[dict]:
    from lrpo_jax import evaluate, parallel, policy as policy_lib
    from lrpo_jax.data.prompts import PromptBuilder, check_languages, language_code
    from lrpo_jax.rewards.lid import LanguageID
    from lrpo_jax.sampling import buckets
    from lrpo_jax.sampling.processing import SamplingParams
    from lrpo_jax.sampling.sampler import Sampler, SamplerSpec
    # Bad languages and swapped model folders fail here, before a model is loaded.
    languages = [language_code(c, "config.languages (configs/sample.py:lang=...)") for c in cfg.languages]
    policy_lib.check_prompt_settings(cfg.prompt)
    if out:
        from lrpo_jax.checkpoint import local_workdir
        local_workdir(out, "--out")
    questions = load_questions(cfg, prompts, prompts_file)
    source = cfg.policy.source
    if not checkpoint and not source.startswith("shipped:"):
        evaluate.check_hf_folder(source.split(":", 1)[1] if source.startswith("hf:") else source,
                                 f"--config.policy.source={source}")
    mesh = parallel.make_mesh(tuple(tuple(a) for a in cfg.mesh))
    if checkpoint:
        cand = evaluate.restore_policy(checkpoint, mesh, hf_usage="--config.policy.source=hf:{}")
    else:
        # A warm-start export remembers the prompt it was taught with, as `evaluate` reads it too.
        cand = evaluate._from_policy_config(cfg.policy, "policy", mesh, cfg.seed)
    mode, chat = policy_lib.prompt_settings(cfg.prompt.mode, cfg.prompt.chat_template, cand.prompt_mode,
                                            cand.chat_template)
    print(f"prompt mode {mode!r}, chat template {chat!r}", flush=True)
    builder = PromptBuilder(cand.tokenizer, mode=mode, chat_template=chat)
    jobs = []
    for row in questions:
        targets = [row["target"]] if row.get("target") else languages
        jobs += [(row, t) for t in targets for _ in range(cfg.samples)]
    check_languages(sorted({t for _, t in jobs}), mode)
    ids = [builder.tokens(row["question"], t) for row, t in jobs]
    eos = policy_lib.eos_ids(cand.dcfg, cand.tokenizer)
    pad = cand.tokenizer.pad_token_id if cand.tokenizer.pad_token_id is not None else eos[0]
    data_par = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = -(-len(ids) // data_par) * data_par
    sampler = Sampler(cand.graphdef, cand.dcfg, SamplerSpec(max_new_tokens=cfg.max_new_tokens, eos_ids=eos,
                                                            pad_id=pad, prompt_buckets=tuple(cfg.prompt_buckets),
                                                            batch_buckets=(batch,)), mesh=mesh)
    sp = SamplingParams.make(len(ids), cfg.temperature, cfg.top_k, cfg.top_p)
    key = jax.random.key(cfg.seed)
    t0 = time.perf_counter()
    result = sampler.generate(cand.params, ids, key, sp)  # first call: compile + prefill + decode
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = sampler.generate(cand.params, ids, key, sp)  # same key: same tokens, now timed warm
    warm = time.perf_counter() - t0
    texts = [cand.tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(result.tokens, result.lengths)]
    lid = LanguageID(sorted({t for _, t in jobs}))
    predicted, _, _ = lid.predict(texts)
    records = []
    for (row, tgt), text, n, lang in zip(jobs, texts, result.lengths, predicted):
        records.append({"question": row["question"], "question_language": row.get("language"),
                        "requested_language": tgt, "lid_language": lang, "tokens": int(n), "response": text})
        print(f"--- [{row.get('language') or '?'} -> {tgt}] LID={lang} tokens={int(n)}\n{text.strip()}\n", flush=True)
    tokens = int(result.lengths.sum())
    length = buckets.pick_bucket(max(map(len, ids)), tuple(cfg.prompt_buckets)) + cfg.max_new_tokens
    cache_bytes = kv_cache_bytes(cand.dcfg, batch, length, jax.numpy.dtype(cand.dcfg.dtype).itemsize)
    stats = {"prompts": len(ids), "generated_tokens": tokens, "first_call_s": round(first, 2),
             "tokens_per_s": round(tokens / warm, 1), "kv_cache_mb": round(cache_bytes / 2**20, 1),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "compliance": float(np.mean([r["lid_language"] == r["requested_language"] for r in records]))}
    print(json.dumps(stats), flush=True)
    if out:
        pathlib.Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def main(argv):
    if len(argv) > 1:  # e.g. a question without --prompt: never sample the built-in questions instead
        from absl import app
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore step at INFO
    from lrpo_jax import compile_cache
    compile_cache.enable("auto")
    from absl import flags
    f = flags.FLAGS
    sample(_CONFIG.value, prompts=f.prompt or (), prompts_file=f.prompts_file, checkpoint=f.checkpoint, out=f.out)


if __name__ == "__main__":
    # Flags are defined here, not at import: `train` defines --config too, and tests import both.
    from absl import app, flags
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Sampling config (configs/sample.py[:args]).")
    flags.DEFINE_multi_string("prompt", None, "A question to answer (repeatable).")
    flags.DEFINE_string("prompts_file", None, "JSONL with `question` (and optional `language`, `target`).")
    flags.DEFINE_string("checkpoint", None, "Sample a training workdir's latest policy instead of config.policy.")
    flags.DEFINE_string("out", None, "Write the samples as JSONL here.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
