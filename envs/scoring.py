"""Answer extraction and scoring for visual-QA benchmarks (CLEVR-Math, TabMWP, ChartQA, GeoQA, M3CoT).

The model writes a chain of thought ending in a line `Answer: <answer>`. Scoring is `final_answer` (find that
line) -> `normalize` (canonical string for the answer type) -> `is_correct` (compare with the gold answer).
Malformed model output parses to None and scores 0.0; it never raises and never matches by chance.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

ANSWER_TYPES = ("integer", "number", "relaxed", "choice", "text")
ANSWER_FORMATS: dict[str, str] = {
    "integer": "Answer: <a whole number>",
    "number": "Answer: <a number>",
    "relaxed": "Answer: <a number, word or short phrase>",
    "choice": "Answer: <the option's letter>",
    "text": "Answer: <a word or short phrase>",
}

RELAXED_TOLERANCE = 0.05  # ChartQA's relative tolerance for numeric answers

_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()
_WORD_NUM = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# Not preceded by a letter/digit/"." so that "v1.5" or "x2" yield no number; ASCII classes because CJK
# characters count as \w and GeoQA-style answers may read "答案是3". Thousands groups must be exactly 3
# digits, so "1,234" is one number but "3,4" is 3.
_NUM = re.compile(
    r"(?<![A-Za-z0-9_.])(?P<sign>[-+\u2212]?)\$?(?P<num>\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?%?"
)
_LETTER = re.compile(r"^(?:option|choice)?\s*[(\[]?([a-z])(?:[)\].:]|$)", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_MARKUP = " \t\r\n*`\"'\u201c\u201d\u2018\u2019"  # markdown emphasis and quotes around an answer
_PUNCT = _MARKUP + "_.,;:!?()[]{}"


def final_answer(text: str, keyword: str = "Answer") -> str | None:
    """The raw answer after the last `<keyword>:` (case-insensitive): the rest of that line, or, when that is
    empty, the next non-empty line. None when the keyword is absent or nothing follows it."""
    # "[ \t*]*" admits markdown such as "**Answer**: 4".
    matches = list(re.finditer(re.escape(keyword) + r"[ \t*]*:", text, re.IGNORECASE))
    if not matches:
        return None
    lines = text[matches[-1].end():].splitlines()
    return next((line.strip() for line in lines if line.strip()), None)


def _first_number(s: str, words: bool = False) -> Fraction | None:
    """The exact value of the first number-like token in s (optionally also English words zero..twenty)."""
    m = _NUM.search(s)
    w = _WORD_NUM.search(s) if words else None
    if w and (m is None or w.start() < m.start()):
        return Fraction(_WORDS.index(w.group(1).lower()))
    if m is None:
        return None
    try:  # ValueError: over Python's 4300-digit int limit
        value = Fraction(m["num"].replace(",", "")) / Fraction(m["den"] or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m["sign"] in ("-", "\u2212") else value


def _norm_number(s: str) -> str | None:
    # PromptPG's TabMWP normalisation: 3 decimals, no trailing ".0"; "%" and units are dropped on both sides.
    value = _first_number(s)
    if value is None:
        return None
    try:
        x = round(float(value), 3)
    except OverflowError:
        return None
    return str(int(x)) if x.is_integer() else str(x)  # floats >= 1e16 are whole, so never "1e+16"


def _norm_text(s: str) -> str | None:
    s = " ".join(s.lower().split()).strip(_PUNCT)
    s = _ARTICLE.sub("", s).strip(_PUNCT)
    return s or None


def _norm_choice(s: str, choices: list[str] | None) -> str | None:
    s = s.strip(_MARKUP)
    n = len(choices) if choices is not None else 26
    m = _LETTER.match(s)
    if m:
        index = ord(m.group(1).upper()) - ord("A")
        # Out of range is a wrong answer; R3V's reference code picked a random option here instead.
        return chr(ord("A") + index) if index < n else None
    text = _norm_text(s)
    for i, choice in enumerate(choices or []):
        if text is not None and _norm_text(choice) == text:
            return chr(ord("A") + i)
    return None


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


def normalize(answer: str, answer_type: str, choices: list[str] | None = None) -> str | None:
    """Canonical string for a gold or predicted answer; None if it cannot be read as answer_type."""
    _check_type(answer_type)
    if answer_type == "integer":
        value = _first_number(answer, words=True)
        return str(value.numerator) if value is not None and value.denominator == 1 else None
    if answer_type == "number":
        return _norm_number(answer)
    if answer_type == "relaxed":
        s = answer.strip(_MARKUP)
        s = s[:-1] if s.endswith(".") else s
        return s.strip() or None
    if answer_type == "choice":
        return _norm_choice(answer, choices)
    return _norm_text(answer)


def parse_answer(text: str, answer_type: str, choices: list[str] | None = None) -> str | None:
    """The normalized final answer of a model's output, or None when there is none or it is unreadable."""
    _check_type(answer_type)
    raw = final_answer(text)
    return None if raw is None else normalize(raw, answer_type, choices)


def _to_float(s: str) -> float | None:
    """ChartQA's reading of a number: "12%" is 0.12."""
    s = s.replace(",", "").removeprefix("$")
    try:
        x = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        return None
    return x if math.isfinite(x) else None  # "nan"/"inf" are words, not numbers


def is_correct(pred: str | None, gold: str, answer_type: str, choices: list[str] | None = None) -> bool:
    """Whether an already-normalized prediction matches the raw gold answer."""
    _check_type(answer_type)
    gold_n = normalize(gold, answer_type, choices)
    if pred is None or gold_n is None:  # an unreadable gold scores nothing rather than crash a long run
        return False
    if answer_type == "number":
        try:
            return abs(float(pred) - float(gold_n)) <= 1e-6
        except ValueError:
            return False
    if answer_type == "relaxed":
        # Official ChartQA relaxed accuracy: "%" divides by 100, so gold "12%" matches pred "0.12" but gold
        # "12" does not match pred "12%"; a gold of 0 falls back to exact string match.
        p, g = _to_float(pred), _to_float(gold_n)
        if p is not None and g:
            return abs(p - g) / abs(g) <= RELAXED_TOLERANCE
        return pred.strip().lower() == gold_n.lower()
    return pred == gold_n


def score(
    text: str, gold: str, answer_type: str, choices: list[str] | None = None
) -> tuple[str | None, float]:
    """(parsed answer, reward): reward is 1.0 when the final answer of text matches gold, else 0.0."""
    pred = parse_answer(text, answer_type, choices)
    return pred, float(is_correct(pred, gold, answer_type, choices))
