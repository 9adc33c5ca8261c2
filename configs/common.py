"""Shared defaults for every LRPO config. Values follow the reference run (lrpo_reference.md §4)
unless a comment says why we differ. Configs import `get_base_config()` and override fields.
"""
import ml_collections

from lrpo_jax import vocab


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 64
    # XLA's persistent compilation cache: "auto" = $LRPO_CACHE/xla, a folder, or "" (off).
    c.compile_cache = "auto"
    # Mesh axes (data, fsdp, tensor); -1 = all remaining devices. fsdp shards weights and batch.
    c.mesh = (("data", 1), ("fsdp", -1), ("tensor", 1))

    # --- policy ---------------------------------------------------------------------------------
    c.policy = ml_collections.ConfigDict()
    c.policy.source = "shipped:gemma3_270m"  # or "hf:/path/to/local/hf/folder"
    c.policy.dtype = "float32"               # compute dtype; "bfloat16" on GPU/TPU
    c.policy.param_dtype = "float32"
    c.policy.remat = False
    c.policy.random_init = False             # tiny random policies for smoke tests
    c.policy.overrides = ml_collections.ConfigDict()  # DecoderConfig overrides (smoke: tiny sizes)

    # --- data -----------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "gsm_symbolic"           # gsm_symbolic | mgsm | parquet | jsonl | care_json
    c.data.path = ""                         # for file sources
    c.data.languages = ("de", "fr", "es", "ja", "zh", "ru")  # question languages to train on
    c.data.max_items = 0                     # per language; 0 = all
    c.data.prompts_per_step = 4              # P: prompts per step (each gets K rollouts)
    c.data.shuffle_seed = 42
    c.data.skip_bad_rows = False

    # --- prompts --------------------------------------------------------------------------------
    c.prompt = ml_collections.ConfigDict()
    c.prompt.mode = "fewshot"                # tag | system | fewshot
    c.prompt.chat_template = "auto"          # auto | never | always

    # --- rollouts -------------------------------------------------------------------------------
    c.rollout = ml_collections.ConfigDict()
    c.rollout.K = 8                          # rollouts per prompt (the GRPO group)
    c.rollout.max_new_tokens = 1024
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0
    c.rollout.top_p = 1.0
    c.rollout.prompt_buckets = (64, 128, 256, 512)

    # --- router (lrpo_reference.md §1, run_lrpo.sh values) ----------------------------------------
    c.router = ml_collections.ConfigDict()
    c.router.enabled = True                  # False: every rollout in the question's language (GRPO)
    c.router.languages = vocab.DEFAULT_LANGUAGES
    c.router.topics = vocab.DEFAULT_TOPICS
    c.router.regions = vocab.DEFAULT_REGIONS
    c.router.regional_topics = (vocab.REGIONAL_TOPIC,)
    c.router.fixed_topics = (vocab.TRANSLATION_TOPIC,)
    c.router.K_on = 2
    c.router.alpha = 0.1
    c.router.update_every = 5
    c.router.norm = "zscore"
    c.router.tau_init, c.router.tau_min, c.router.tau_decay = 1.0, 0.3, 0.999
    c.router.eps_init, c.router.eps_min, c.router.eps_decay = 0.2, 0.0, 0.995
    c.router.reference_compat = False
    c.router.observe_quota = True            # reference: original-language quota rollouts are observed
    c.router.observe_fixed = True            # reference: Translation (fixed) rollouts are observed
    c.router.norm_eps = 1e-6
    c.router.min_count = 1.0                 # cells with fewer rollouts are not learned from (1 = reference)
    c.router.topic_prior = ""                # mix strings "code:w,..." per topic, JSON dict; "" = uniform
    c.router.region_prior = ""
    c.router.fixed_mix = ""                  # LRPO-Fixed / baselines: constant mix, no learning ("own:0.25,others:0.75", "own:0.75,en:0.25")
    c.router.log_every = 1
    c.router.log_max_keys = 100

    # --- reward ---------------------------------------------------------------------------------
    c.reward = ml_collections.ConfigDict()
    c.reward.encoder = "shipped:e5_small"    # or "hf:/path/to/mmBERT-small"
    c.reward.pooling = "mean"
    c.reward.max_length = 512
    # Encoder padding buckets: each compiles once (then cached on disk); coarse buckets waste compute
    # (a 131-token batch padded to 256 costs ~2x), fine ones compile more programs.
    c.reward.length_buckets = tuple(range(32, 513, 32))
    c.reward.calibration = "mean"            # raw | mean | quantile
    c.reward.table = "auto"                  # path to a table .npz, or "auto" = build/cache from shipped data
    c.reward.table_items = 100               # "auto": parallel gsm-symbolic items per language
    c.reward.missing_pair = "error"          # error | raw (uncalibrated) | mu_ref (an average pair), counted
    c.reward.online_rate = 0.0               # >0: online update of pair means from rollouts
    c.reward.gate = "hard"                   # hard | soft | none
    c.reward.gate_threshold = 0.0
    c.reward.similarity_weight = 1.0
    c.reward.answer_weight = 0.0             # verifiable numeric answer reward (math data)

    # --- GRPO (verl 0.5 semantics; model_specs.md §1) -------------------------------------------
    c.rl = ml_collections.ConfigDict()
    c.rl.norm_adv_by_std = True
    c.rl.clip_low, c.rl.clip_high, c.rl.clip_c = 0.2, 0.2, 3.0
    c.rl.kl_coef = 0.001
    c.rl.kl_type = "low_var_kl"
    c.rl.entropy_coef = 0.0
    c.rl.loss_agg = "token-mean"
    # Deviation from the reference, on purpose: one loss denominator over the whole mini-batch (Tunix,
    # newer verl), so the update does not depend on micro_batch or the device count. False: verl 0.5's
    # mean of per-micro-batch losses (our micro-batches span all devices; verl's are per GPU).
    c.rl.global_token_mean = True
    c.rl.micro_batch = 8                     # rows per gradient-accumulation micro-batch
    # Recompute each chunk's [rows, 64, vocab] logits in the backward pass (memory-safe default).
    # False keeps a micro-batch's logits (micro_batch x max_new_tokens x vocab x 4 bytes) and skips
    # a fourth output-projection matmul: faster where that fits (see configs/demo.py).
    c.rl.logits_remat = True
    c.rl.ppo_epochs = 1
    c.rl.mini_batches = 1

    # --- optimiser ------------------------------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
    c.optim.grad_clip = 1.0
    c.optim.warmup_steps = 0                 # linear warm-up, in optimizer steps (mini_batches x ppo_epochs a step)

    # --- logging and checkpoints ----------------------------------------------------------------
    c.log = ml_collections.ConfigDict()
    c.log.rollouts_every = 1                 # every rollout to rollouts.jsonl, a sample as TensorBoard text
    c.log.rollouts_shown = 8
    c.log.heatmaps_every = 10                # router heatmap images (matplotlib, ~0.3 s each) every N steps + last
    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every = 10
    c.ckpt.keep = 3
    return c
