"""The LRPO reward: r = (w_sim * calibrate(sim(response, reference)) + w_ans * answer_match) * gate.

The gate multiplies both terms: a correct answer in a language other than the routed one earns 0.

Every component is returned separately so the trainer can log it per language, and every zero
has a counted reason (empty response, no language content, other language, NaN similarity,
calibration fallback). Bad inputs never raise in the middle of a run and never default a
language: the configured languages are validated once, at start-up.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax.rewards import calibration as calib_lib
from lrpo_jax.rewards import verifiable
from lrpo_jax.rewards.lid import LanguageID
from lrpo_jax.rewards.similarity import ReferenceCache, SimilarityModel


@dataclasses.dataclass
class RewardResult:
    reward: np.ndarray                 # f32 [N]
    components: dict[str, np.ndarray]  # similarity, calibrated, gate, answer (each [N])
    predicted_language: np.ndarray     # object [N]: LID top-1 (None = no language content)
    reasons: collections.Counter
    similarity_ok: np.ndarray          # bool [N]: a finite similarity (NaNs are zeroed in `components`)


class RewardModel:
    def __init__(self, similarity: SimilarityModel | None, lid: LanguageID, table: calib_lib.CalibrationTable | None,
                 *, calibration: str = "mean", gate: str = "hard", gate_threshold: float = 0.0,
                 similarity_weight: float = 1.0, answer_weight: float = 0.0, missing_pair: str = "error",
                 languages: Sequence[str] = ()):
        if calibration not in ("raw", "mean", "quantile"):
            raise ValueError(f"reward.calibration={calibration!r}; expected raw, mean or quantile")
        if similarity_weight and similarity is None:
            raise ValueError("reward.similarity_weight > 0 needs an encoder")
        self._absent = None  # [L, L] pairs scored by the reward.missing_pair fallback
        if calibration != "raw":
            if table is None:
                raise ValueError(f"reward.calibration={calibration!r} needs a calibration table")
            absent = table.check_covers(languages, missing_pair)  # raises for 'error'
            if absent:
                # Said once at start-up; each use is counted in the metrics (reasons/calibration_fallback).
                logging.warning("calibration table lacks %d language pair(s), scored by reward.missing_pair=%r: %s",
                                len(absent), missing_pair, ", ".join(f"{a}->{b}" for a, b in absent))
                table, self._absent = calib_lib.with_fallback(table, languages, missing_pair)
        self.sim, self.lid, self.table = similarity, lid, table
        self.calibration, self.gate_mode, self.threshold = calibration, gate, gate_threshold
        self.w_sim, self.w_ans = similarity_weight, answer_weight
        self.refs = ReferenceCache(similarity) if similarity is not None else None
        method = calibration

        def calibrate(table, sim, a, b):
            return calib_lib.calibrate(table, sim, a, b, method)

        self._calibrate = jax.jit(calibrate)

    def score(self, responses: Sequence[str], targets: Sequence[str], ref_keys: Sequence, ref_texts: Sequence[str],
              ref_langs: Sequence[str], numeric_answers: Sequence[float | None] | None = None) -> RewardResult:
        n = len(responses)
        reasons = collections.Counter()
        gate, predicted, gate_reasons = self.lid.gate(responses, targets, mode=self.gate_mode, threshold=self.threshold)
        reasons.update({f"gate/{k}": v for k, v in gate_reasons.items()})
        sim = np.zeros(n, np.float32)
        sim_ok = np.ones(n, bool)
        calibrated = np.zeros(n, np.float32)
        if self.w_sim:
            emb = self.sim.embed(responses)
            refs = self.refs.get(list(ref_keys), list(ref_texts))
            sim = np.einsum("nd,nd->n", emb, refs).astype(np.float32)
            bad = ~np.isfinite(sim)
            sim_ok = ~bad
            if bad.any():
                reasons["nan_similarity"] += int(bad.sum())
                sim = np.where(bad, 0.0, sim)
            if self.table is not None:
                a = self.table.lang_ids(ref_langs, "reference language")
                b = self.table.lang_ids(targets, "response language")
            else:
                a = b = np.zeros(n, np.int32)
            cal, missing = self._calibrate(self.table, jnp.asarray(sim), jnp.asarray(a), jnp.asarray(b))
            calibrated = np.where(bad, 0.0, np.asarray(cal))
            fallback = np.asarray(missing) if self._absent is None else self._absent[a, b]
            if fallback.any():
                reasons["calibration_fallback"] += int(fallback.sum())
        empty = np.array([not str(r).strip() for r in responses])
        answer = np.zeros(n, np.float32)
        if self.w_ans:
            for i, (text, value) in enumerate(zip(responses, numeric_answers or [None] * n)):
                answer[i], why = verifiable.score(text, value)
                reasons[f"answer/{why}"] += 1
        reward = (self.w_sim * calibrated + self.w_ans * answer) * gate
        reward = np.where(empty, 0.0, reward).astype(np.float32)
        return RewardResult(reward=reward, predicted_language=predicted, reasons=reasons, similarity_ok=sim_ok,
                            components={"similarity": sim, "calibrated": calibrated, "gate": gate, "answer": answer})

    def adapt(self, result: RewardResult, ref_langs: Sequence[str], targets: Sequence[str], rate: float) -> None:
        """Online calibration: moves each (reference, response) pair mean towards this batch's raw
        similarities of gate-passing, non-empty rollouts (`calibration.online_update`, rate `rate`).
        Only rollouts in the requested language count: off-language text says nothing about how
        similar a correct answer in that language scores."""
        if self.table is None or not rate:
            return
        sim = result.components["similarity"]
        # The LID top-1 itself, not the gate value: with gate "soft" or "none" the gate is positive
        # for off-language text too. Empty or code-only text has no prediction (None).
        in_target = np.array([p is not None and p == t for p, t in zip(result.predicted_language, targets)])
        weight = in_target & result.similarity_ok
        a = self.table.lang_ids(ref_langs, "reference language")
        b = self.table.lang_ids(targets, "response language")
        self.table = calib_lib.online_update(self.table, jnp.asarray(sim), jnp.asarray(a), jnp.asarray(b),
                                             jnp.asarray(weight), rate)
