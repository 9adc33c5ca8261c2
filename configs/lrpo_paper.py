"""Shared settings of the paper runs (lrpo_reference.md §4) and their variants; imported by the
per-model configs (lrpo_qwen2_5_1_5b.py, lrpo_llama3_2_1b.py, lrpo_gemma3_4b.py).

256 prompts x 8 rollouts per step, 1 Adam step (on-policy), lr 1e-6, k3 KL 0.001, bf16 compute with
fp32 master weights, FSDP over all devices; ~64 steps (4 epochs of the paper's 4,396 prompts).
Add ',runlocal' for a 2-step tiny-batch check of the same code path. The model folder is a local Hugging Face checkpoint (nothing is
downloaded); the data is the reference's verl parquet schema. Config args: variant, model_dir, data,
encoder_dir, table (a calibration table, default 'auto'), missing_pair (mu_ref | raw | error), steps,
runlocal.

Variants (`:variant=NAME`):
  lrpo            the method (router + mean calibration + LID gate)
  grpo            monolingual GRPO baseline: every rollout in the question's language
  input_dominant  fixed mix: 75% question language, 25% English (Table 2: 31.78, the same figure as
                  the ablation table's "LRPO-Fixed" row)
  en_dominant     fixed mix: 25% question language, 75% English (Table 2: 31.89)
  fixed           fixed mix: 25% question language, 75% uniform over the other languages, no learning
                  (Table 2's "uniform", 31.36)
  calib_raw | calib_quantile   calibration ablations (calib_mean = lrpo)
  no_region       no region matrix B (no topic is regional)
  no_gate         no language-ID gate
  no_anneal       constant tau and eps
  reference       lrpo with the reference's topic-EMA-per-region-cell update (reference_compat)
"""
from lrpo_jax import config_lib

VARIANTS = ("lrpo", "grpo", "input_dominant", "en_dominant", "fixed", "calib_raw", "calib_quantile",
            "no_region", "no_gate", "no_anneal", "reference")
TRAIN_LANGS = ("ar", "de", "es", "fr", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "vi", "zh")


def get_paper_config(arg, *, model_dir_default: str, policy_dtype: str = "bfloat16"):
    a = config_lib.parse_arg(arg, variant="lrpo", model_dir=model_dir_default, data="data/lrpo_train.parquet",
                             encoder_dir="", table="auto", missing_pair="mu_ref", steps=64, runlocal=False)
    if a.variant not in VARIANTS:
        raise ValueError(f"unknown variant {a.variant!r}; choose one of {VARIANTS}")
    c = config_lib.base_config()
    c.total_steps = a.steps
    c.mesh = (("data", 1), ("fsdp", -1), ("tensor", 1))
    c.policy.source = f"hf:{a.model_dir}"
    c.policy.dtype = policy_dtype
    c.policy.remat = True
    c.data.source = "parquet"
    c.data.path = a.data
    c.data.languages = TRAIN_LANGS
    c.data.prompts_per_step = 256
    c.prompt.mode = "tag"                    # a warm-started policy (python -m lrpo_jax.warmstart)
    c.rollout.K = 8
    c.rollout.max_new_tokens = 1024
    c.rollout.prompt_buckets = (128, 256, 512)
    # The reference's encoder is mmBERT-small (give its local HF folder); e5-small ships offline.
    c.reward.encoder = f"hf:{a.encoder_dir}" if a.encoder_dir else "shipped:e5_small"
    c.reward.table = a.table
    # The shipped data behind table='auto' has no parallel items for 8 of the 225 ordered pairs among
    # es/id/pl/pt (README, known gaps): those score as an average pair, listed at start-up and counted
    # in the metrics. A table built from your own parallel data covers every pair; ':missing_pair=error'
    # then insists on it.
    c.reward.missing_pair = a.missing_pair
    c.rl.micro_batch = 32
    c.optim.lr = 1e-6
    c.ckpt.every = 10
    v = a.variant
    if v == "grpo":
        c.router.enabled = False
    elif v in ("input_dominant", "en_dominant", "fixed"):
        own = {"input_dominant": 0.75, "en_dominant": 0.25, "fixed": 0.25}[v]
        if v == "fixed":  # the question's language gets exactly 25% ("others" excludes it)
            c.router.fixed_mix = f"own:{own},others:{1 - own}"
        else:
            c.router.fixed_mix = f"own:{own},en:{1 - own}"
        c.router.K_on = 0
    elif v.startswith("calib_"):
        c.reward.calibration = v.split("_", 1)[1]
    elif v == "no_region":
        c.router.regional_topics = ()
    elif v == "no_gate":
        c.reward.gate = "none"
    elif v == "no_anneal":
        c.router.tau_decay = c.router.eps_decay = 1.0
        c.router.tau_min, c.router.eps_min = c.router.tau_init, c.router.eps_init
    elif v == "reference":
        c.router.reference_compat = True
    if a.runlocal:  # same code path, tiny sizes: checks a config end to end on a workstation
        c.data.prompts_per_step, c.rollout.K, c.rollout.max_new_tokens, c.rl.micro_batch = 2, 4, 16, 8
        c.total_steps = 2
    return c
