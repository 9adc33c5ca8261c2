"""Verifiable numeric answers for math data (MGSM, multilingual-gsm-symbolic).

Extraction: the content of the last `\\boxed{...}`, else the last number in the text. Digits of
other scripts (Arabic-Indic, Persian, Devanagari, Bengali, Thai, Telugu, full-width) are mapped to
ASCII first. Separators are read per number: "1,234.5" and "1.234,5" are both 1234.5; a single
separator followed by exactly three digits ("1,234" / "1.234") is a thousands separator, otherwise
a decimal mark ("0,3" = 0.3) — the convention of the GSM data in every language we ship. A space
(or a no-break/thin space) groups digits only when exactly three follow ("1 234" = 1234): "3 5" and
"18\n2." are two numbers each. A hyphen right after a word or number is a dash, not a minus sign.
"""
from __future__ import annotations

import re

_DIGIT_BLOCKS = (0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x0C66, 0xFF10)  # zero of each script
_TRANSLATE = {zero + d: str(d) for zero in _DIGIT_BLOCKS for d in range(10)}
_TRANSLATE.update({ord("\u066b"): ".", ord("\u066c"): ",", ord("\uff0c"): ",", ord("\uff0e"): ".",
                   ord("\u2212"): "-", ord("\u00a0"): " ", ord("\u202f"): " ", ord("\u2009"): " "})
# A minus sign only where no word or number precedes it: "pages 10-12", "2024-05-06" and "COVID-19"
# hold dashes, not negative numbers.
_NUMBER = re.compile(r"(?:(?<![\w.,])-)?\d+(?:[.,]\d+| \d{3}(?!\d))*")
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def _to_float(token: str) -> float | None:
    t = token.replace(" ", "")
    if "," in t and "." in t:  # both: the later one is the decimal mark
        t = t.replace(",", "") if t.rfind(".") > t.rfind(",") else t.replace(".", "").replace(",", ".")
    elif t.count(",") > 1 or t.count(".") > 1:  # repeated: thousands separators
        t = t.replace(",", "").replace(".", "")
    elif re.fullmatch(r"-?\d{1,3}[.,]\d{3}", t):
        t = t.replace(",", "").replace(".", "")
    else:
        t = t.replace(",", ".")
    try:
        return float(t)
    except ValueError:
        return None


def parse_number(text: str) -> float | None:
    """The value of a text that is exactly one number (any script's digits, either separator
    convention), else None. Data loaders read reference answers with this, so references and
    responses follow one rule."""
    t = str(text).translate(_TRANSLATE).strip()
    return _to_float(t) if _NUMBER.fullmatch(t) else None


def extract_number(text: str) -> tuple[float | None, str]:
    """(value, how): how is 'boxed', 'last_number' or 'none'."""
    text = str(text).translate(_TRANSLATE)
    boxed = _BOXED.findall(text)
    if boxed:
        nums = _NUMBER.findall(boxed[-1])
        if nums:
            return _to_float(nums[-1]), "boxed"
    nums = _NUMBER.findall(text)
    if nums:
        return _to_float(nums[-1]), "last_number"
    return None, "none"


def score(text: str, answer: float | None, rel_tol: float = 1e-6) -> tuple[float, str]:
    """1.0 if the extracted number equals `answer` (relative tolerance), with a reason."""
    if answer is None:
        return 0.0, "no_reference_number"
    value, how = extract_number(text)
    if value is None:
        return 0.0, "no_number"
    ok = abs(value - answer) <= rel_tol * max(1.0, abs(answer))
    return (1.0, f"match_{how}") if ok else (0.0, "wrong_number")
