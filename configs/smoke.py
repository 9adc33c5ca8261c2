"""Smoke config: the real LRPO code path end to end with a tiny random policy, in well under a minute.

    python -m lrpo_jax.train --config configs/smoke.py --workdir /tmp/lrpo_smoke

Tiny random Qwen2-shaped policy with the real Qwen2.5 tokenizer and chat template, real
multilingual-e5-small reward encoder (calibration table built from 6 parallel gsm-symbolic items
per language and cached), real lid.176 gate, gsm-symbolic prompts in de/ja routed over 4
languages. Used by tests (exact resume, multi-process, notebooks). Expect near-zero compliance and
reward: the policy is random; the point is that every piece runs.
"""
from lrpo_jax import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, steps=3, K=4, prompts=2, online=0.0)
    c = config_lib.base_config()
    c.total_steps = a.steps
    c.policy.source = "shipped:qwen25_tokenizer"
    c.policy.random_init = True
    c.policy.overrides = dict(family="qwen2", vocab_size=151665, hidden_size=64, intermediate_size=128, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, qkv_bias=True,
                              tie_embeddings=True, eos_token_ids=(151645, 151643), pad_token_id=151643)
    c.data.languages = ("de", "ja")
    c.data.max_items = 8
    c.data.prompts_per_step = a.prompts
    c.rollout.K = a.K
    c.rollout.max_new_tokens = 8
    c.rollout.prompt_buckets = (512,)  # one sampler/update program: compiling a second costs ~10 s here
    c.router.languages = ("de", "en", "fr", "ja")
    c.router.K_on = 1
    c.router.update_every = 2
    c.reward.table_items = 6
    c.reward.length_buckets = (32, 128, 512)
    c.reward.online_rate = a.online
    c.rl.micro_batch = a.K * a.prompts
    c.optim.lr = 1e-3
    c.ckpt.every = 1
    return c
