"""Warm-start SFT on Gemma-3-270M: answer in the requested language (reference tag prompts).

    python -m lrpo_jax.warmstart --config configs/warmstart.py --workdir runs/warm
    python -m lrpo_jax.evaluate --config configs/evaluate.py:answer=ar+de+en+fr+it+ja+ru+zh,n=4,new_tokens=48,mode=tag \\
        --baseline --hf_dir runs/warm/hf --out runs/warm/eval
    python -m lrpo_jax.train --config configs/demo.py --config.policy.source=hf:runs/warm/hf \\
        --config.prompt.mode=tag --workdir runs/demo_warm

Examples: parallel multilingual-gsm-symbolic items, a question in one of the demo's six languages
with `<|out_lang_Y|>` for each of the router's eight languages Y, and the worked answer written in
Y (calculator annotations removed, cut at 64 tokens). The first 16 items per language are held
out (the items `evaluate` reads by default). The base model ignores the tag (0/8 compliance);
after this run it follows it: see the README for the measured before/after table. About 15
minutes on a 2-core CPU.
"""
from lrpo_jax import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, steps=24, batch=8, lr=2e-5, mode="tag", policy="shipped:gemma3_270m",
                             answer_tokens=64)
    c = config_lib.base_config()
    for group in ("router", "reward", "rl", "log"):  # not used by supervised fine-tuning
        del c[group]
    c.total_steps = a.steps
    c.policy.source = a.policy
    c.data.languages = ("de", "fr", "ja", "zh", "ru", "ar")   # question languages
    c.data.max_items = 0
    c.prompt.mode = a.mode
    c.rollout.prompt_buckets = (64, 96, 128, 160, 192, 256, 384, 512)

    c.warmstart = type(c)()
    c.warmstart.target_languages = ("ar", "de", "en", "fr", "it", "ja", "ru", "zh")  # requested answer languages
    c.warmstart.holdout_items = 16          # per language: kept for `evaluate` (its default n=16)
    c.warmstart.max_answer_tokens = a.answer_tokens
    c.warmstart.answer_buckets = (16, 32, 64, 128, 256)
    c.warmstart.batch_size = a.batch
    c.warmstart.micro_batch = a.batch

    c.optim.lr = a.lr
    c.optim.warmup_steps = 2
    c.ckpt.every = 8
    return c
