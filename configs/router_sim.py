"""Router simulator: synthetic topics/regions with a known best language per cell.

    python -m lrpo_jax.router_sim --config configs/router_sim.py --workdir /tmp/router_sim

Runs four scenarios through the real jitted assign / observe / maybe_update loop (one lax.scan
each) and writes, per scenario, router.jsonl, metrics.json and regret / probs / heatmaps PNGs, plus
summary.json. Expected (2 CPU cores, ~11 s in all; seed 0, 300 steps x 128 prompts x 8 rollouts,
60 router updates; "best-arm p" = effective routing probability of the true best language):
  clean              Bernoulli rewards: best-arm p >= 0.85 in all 10 scored cells (min 0.88, mean
                     0.94), cumulative regret ~25% of a uniform router's.
  clean_min_count_1  the same with the reference's normalisation over every observed language
                     (min_count 1): plateaus lower (min ~0.70-0.77, mean ~0.82) over seeds 0-3.
  bias_raw           similarity-like rewards where answering in the question's own language earns a
                     +0.05 bonus (raw same-language cosines, lrpo_reference.md §2.2, §7.5): collapses
                     onto the questions' languages, best-arm p < 0.05 in 8 of 10 cells (mean ~0.15).
  bias_calibrated    the same rewards after mean calibration (subtract mu_pair - mu_ref, estimated
                     from 30 synthetic equivalent pairs per language pair): best-arm p >= 0.93.

Variants: `configs/router_sim.py:scenarios=clean+bias_raw,steps=200,seed=1`; any field can be overridden
with `--config.router.norm=center` etc. The tau / eps decays are faster than the reference run's
(0.999 / 0.995 per step) because the simulator runs 300 steps instead of ~64.
"""
import ml_collections

from lrpo_jax import config_lib

# Cells of the synthetic world. Topic cells: (topic, best language, question-language mix,
# share of prompts); an empty best language marks a fixed topic (every rollout in the question's
# language), which is simulated but not scored. Region cells are prompts of the regional topic
# from one region: (region, best language, question-language mix, share of prompts).
TOPIC_CELLS = (
    ("General Knowledge", "en", "zh:4,ja:2,ar:2,es:1,fr:1", 1.0),
    ("Chat / Conversational", "es", "zh:2,ko:1,fr:1", 1.0),
    ("Reasoning / Logic", "en", "zh:3,ja:1,ru:1", 1.0),
    ("Safety / Ethics", "de", "fr:1,it:1,nl:1", 0.6),
    ("Translation", "", "zh:2,ja:1", 0.4),
)
REGION_CELLS = (
    ("China", "zh", "ja:2,ko:1,en:1", 1.0),
    ("Japan", "ja", "zh:3,ko:1", 1.0),
    ("Arab World", "ar", "fr:1,en:1", 0.8),
    ("Russia", "ru", "zh:1,de:1", 0.8),
    ("Latin America", "es", "pt:2,en:1", 0.8),
    ("Europe", "fr", "zh:1,ja:1", 0.8),
)

SCENARIOS = {
    # Bernoulli rewards with means in [0.3, 0.6] and the best arm `gap` above the others.
    "clean": dict(noise="bernoulli", noise_scale=0.0, quality_low=0.3, quality_high=0.6, gap=0.25,
                  same_lang_bonus=0.0, pair_spread=0.0, calibration="none", reward_map="identity"),
    # The same world with the reference's normalisation over every observed language, however few
    # its rollouts (min_count 1): languages explored once or twice get extreme z-scores and keep
    # pulling probability away from the best arm (lrpo_reference.md §7.3).
    "clean_min_count_1": dict(noise="bernoulli", noise_scale=0.0, quality_low=0.3, quality_high=0.6, gap=0.25,
                              same_lang_bonus=0.0, pair_spread=0.0, calibration="none", reward_map="identity",
                              router=dict(min_count=1)),
    # Similarity-like rewards: quality 0.90-0.92 (+0.02 for the best arm), Gaussian noise, a +0.05
    # same-language bonus and +-0.01 pair biases, mapped to [0, 1] by (s + 1) / 2 as the reference.
    "bias_raw": dict(noise="gaussian", noise_scale=0.02, quality_low=0.90, quality_high=0.92, gap=0.02,
                     same_lang_bonus=0.05, pair_spread=0.01, calibration="none", reward_map="sim_to_reward"),
    "bias_calibrated": dict(noise="gaussian", noise_scale=0.02, quality_low=0.90, quality_high=0.92, gap=0.02,
                            same_lang_bonus=0.05, pair_spread=0.01, calibration="mean",
                            reward_map="sim_to_reward"),
}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, scenarios="clean+clean_min_count_1+bias_raw+bias_calibrated", steps=300, seed=0)
    c = ml_collections.ConfigDict()
    c.seed = a.seed
    c.steps = a.steps                    # training steps simulated
    c.prompts_per_step = 128             # P (the reference run: 256)
    c.log_every = 5                      # router.jsonl lines every N steps
    c.scenarios = tuple(s.strip() for s in a.scenarios.split("+") if s.strip())  # "," separates arguments
    unknown = [s for s in c.scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; available: {sorted(SCENARIOS)}")
    c.scenario = ml_collections.ConfigDict({name: SCENARIOS[name] for name in c.scenarios})

    c.world = ml_collections.ConfigDict()
    c.world.seed = 1                     # draws the arms' quality and the pair biases
    c.world.topic_cells = TOPIC_CELLS
    c.world.region_cells = REGION_CELLS
    c.world.equivalent_sim = 0.95        # mean similarity of equivalent pairs before pair bias
    c.world.calib_pairs = 30             # equivalent pairs per language pair for the mean table

    c.router = ml_collections.ConfigDict()
    c.router.languages = ("ar", "de", "en", "es", "fr", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "vi", "zh")
    c.router.topics = ("Regional Knowledge", "General Knowledge", "Chat / Conversational", "Reasoning / Logic",
                       "Safety / Ethics", "Translation")
    c.router.regions = tuple(r[0] for r in REGION_CELLS)
    c.router.regional_topics = ("Regional Knowledge",)
    c.router.fixed_topics = ("Translation",)
    c.router.K = 8
    c.router.K_on = 2
    c.router.alpha = 0.1
    c.router.update_every = 5
    c.router.norm = "zscore"
    c.router.norm_eps = 1e-6
    c.router.min_count = 3               # (topic, region, language) cells with fewer rollouts are not learned
                                         # from; 1 = the reference (see scenario clean_min_count_1)
    c.router.tau_init, c.router.tau_min, c.router.tau_decay = 1.0, 0.3, 0.99
    c.router.eps_init, c.router.eps_min, c.router.eps_decay = 0.2, 0.02, 0.99
    c.router.reference_compat = False
    c.router.observe_quota = True
    c.router.log_max_keys = 100
    return c
