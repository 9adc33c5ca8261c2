"""Sampling alone: a policy answers questions in requested languages (no training, no reward model).

    python -m lrpo_jax.sample --config configs/sample.py
    python -m lrpo_jax.sample --config configs/sample.py:lang=ja,n=4,temperature=0.7 --prompt "Wie viele Tage hat ein Schaltjahr?"
    python -m lrpo_jax.sample --config configs/sample.py --config.policy.source=hf:runs/warm/hf \\
        --config.prompt.mode=tag --prompts_file questions.jsonl --out samples.jsonl

Defaults: shipped Gemma-3-270M (fp32 on CPU), the first two multilingual-gsm-symbolic questions in
German and Japanese, each answered in German ('fewshot' language request), 2 samples per prompt at
temperature 1.0, 96 new tokens. A checkpoint or warm-start export is prompted as it was trained
(prompt.mode 'auto', chat_template 'trained'). Prints every response with its language-ID label,
then the first call's time (compile + the whole generation), warm generated tokens/s and the
KV-cache size (at the compute dtype). About a minute on CPU.
"""
from lrpo_jax import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, lang="de", n=2, temperature=1.0, new_tokens=96, policy="shipped:gemma3_270m")
    c = config_lib.base_config()
    s = type(c)()
    s.seed = 0
    s.mesh = c.mesh
    s.policy = c.policy
    s.policy.source = a.policy
    s.prompt = c.prompt
    s.prompt.mode = "auto"                 # auto: the policy's training mode (else fewshot) | tag | system | fewshot
    s.prompt.chat_template = "trained"     # trained: its training setting (else auto) | auto | never | always
    s.languages = tuple(x for x in a.lang.split("+") if x)  # answer languages, e.g. "de+ja"
    s.questions_from = ("de", "ja")        # built-in questions: first gsm-symbolic items in these languages
    s.questions_per_language = 1
    s.samples = a.n                        # samples per (question, answer language)
    s.temperature = a.temperature
    s.top_k = 0
    s.top_p = 1.0
    s.max_new_tokens = a.new_tokens
    s.prompt_buckets = (64, 128, 256, 512, 1024)
    return s
