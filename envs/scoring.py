"""Answer extraction and scoring for visual-QA benchmarks (CLEVR-Math, TabMWP, ChartQA, GeoQA, M3CoT).

The model writes a chain of thought ending in a line `Answer: <answer>`. Scoring is `final_answer` (find that
line) -> `normalize` (canonical string for the answer type) -> `is_correct` (compare with the gold answer).
Malformed model output parses to None and scores 0.0; it never raises and never matches by chance.

One answer type per official scorer:
- "integer" (CLEVR-Math): one whole number.
- "number" (TabMWP free text; PromptPG `normalize_answer`): commas dropped, fractions divided, 3 decimals.
- "relaxed" (ChartQA; pix2struct `relaxed_correctness`): 5% for non-zero numeric targets, else exact match.
- "choice" (GeoQA): the option's letter, or its exact text.
- "tabmwp_choice" (TabMWP multiple choice; PromptPG `extract_prediction`): letter, text, or the single most
  similar option.
- "m3cot" (M3CoT `judge_answer`): text after `[Answer]` or `Answer:`; `(X)`; an option's text; a lone letter.
- "text": exact match after light normalisation.
An answer with two different candidate values (a hedge such as "7 or 8") is never read as either: wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

ANSWER_TYPES = ("integer", "number", "relaxed", "choice", "text", "tabmwp_choice", "m3cot")
ANSWER_FORMATS: dict[str, str] = {
    "integer": "Answer: <a whole number>",
    "number": "Answer: <a number>",
    "relaxed": "Answer: <a number, word or short phrase>",
    "choice": "Answer: <the option's letter>",
    "text": "Answer: <a word or short phrase>",
    "tabmwp_choice": "Answer: <the option's letter>",
    "m3cot": "Answer: <the option's letter>",
}

RELAXED_TOLERANCE = 0.05  # ChartQA's relative tolerance for numeric answers

_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()
_WORD_NUM = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# Not preceded by a letter/digit/"." so that "v1.5" or "x2" yield no number; ASCII classes because CJK
# characters count as \w and GeoQA-style answers may read "答案是3". Thousands groups must be exactly 3
# digits, so "1,234" is one number but "3,4" is two.
_NUM = re.compile(
    r"(?<![A-Za-z0-9_.])(?P<sign>[-+\u2212]?)\$?(?P<num>\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?%?"
)
# A time of day: "7:40", "07:40", "7:40 P.M.", "7:40pm". Minutes need two digits, so a ratio "3:2" is not one.
_TIME = re.compile(r"(?<![\d:.])(\d{1,2}):([0-5]\d)(?![\d:])(?:\s*([AaPp])\.?\s*[Mm]\b\.?)?")
_TEX_FRAC = re.compile(r"\\[dt]?frac\{\s*([^{}]*?)\s*\}\{\s*([^{}]*?)\s*\}")  # PromptPG: \frac{a}{b} -> a/b
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


def _time_of_day(m: re.Match) -> str | None:
    """Canonical "H:MM" (24-hour) of a time match; None when the hour is out of range."""
    hour, minute, meridiem = int(m.group(1)), int(m.group(2)), m.group(3)
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem.lower() == "p" else 0)
    elif hour > 23:
        return None
    return f"{hour}:{minute:02d}"


def _canon_times(s: str) -> str:
    """s with every time of day in canonical form, so "2:35 P.M." and "14:35" read the same."""
    return _TIME.sub(lambda m: _time_of_day(m) or m.group(0), s)


def _numbers(s: str, words: bool = False) -> list[Fraction] | None:
    """Exact values of every number-like token in s (optionally also English words zero..twenty);
    None when a token cannot be read (too long, division by zero)."""
    values = []
    for m in _NUM.finditer(_TEX_FRAC.sub(r"\1/\2", s)):
        try:  # ValueError: over Python's 4300-digit int limit
            value = Fraction(m["num"].replace(",", "")) / Fraction(m["den"] or 1)
        except (ValueError, ZeroDivisionError):
            return None
        values.append(-value if m["sign"] in ("-", "\u2212") else value)
    if words:
        values += [Fraction(_WORDS.index(w.lower())) for w in _WORD_NUM.findall(s)]
    return values


def _round3(value: Fraction) -> str | None:
    # PromptPG's TabMWP normalisation: 3 decimals, no trailing ".0".
    try:
        x = round(float(value), 3)
    except OverflowError:
        return None
    return str(int(x)) if x.is_integer() else str(x)  # floats >= 1e16 are whole, so never "1e+16"


def _single(candidates: list[str | None]) -> str | None:
    """The one value all candidates agree on; None for none, an unreadable one, or two different ones."""
    distinct = set(candidates)
    return distinct.pop() if len(distinct) == 1 and None not in distinct else None


def _norm_number(s: str) -> str | None:
    times = list(_TIME.finditer(s))
    if times:  # a time of day, "7:40 P.M." -> "19:40", with no other number beside it
        return _single([_time_of_day(m) for m in times]) if _numbers(_TIME.sub(" ", s)) == [] else None
    values = _numbers(s)
    return _single([_round3(v) for v in values]) if values else None


def _norm_integer(s: str) -> str | None:
    if _TIME.search(s):
        return None
    values = _numbers(s, words=True)
    value = _single([str(v) for v in values]) if values else None  # exact values: "3" and "3.0" agree
    return value if value is not None and "/" not in value else None


def _norm_text(s: str) -> str | None:
    s = " ".join(_canon_times(s).lower().split()).strip(_PUNCT)
    s = _ARTICLE.sub("", s).strip(_PUNCT)
    return s or None


def _letter_index(s: str) -> int | None:
    """The option index of a letter-form answer ("B", "(B)", "B.", "B: text", "Option B"), else None."""
    m = _LETTER.match(s.strip(_MARKUP))
    return ord(m.group(1).upper()) - ord("A") if m else None


def _option_by_text(text: str | None, choices: list[str] | None) -> str | None:
    hits = [i for i, c in enumerate(choices or []) if text is not None and _norm_text(c) == text]
    return chr(ord("A") + hits[0]) if len(hits) == 1 else None


def _norm_choice(s: str, choices: list[str] | None) -> str | None:
    index = _letter_index(s)
    if index is None:
        return _option_by_text(_norm_text(s), choices)
    # Out of range is a wrong answer; R3V's reference code picked a random option here instead.
    return chr(ord("A") + index) if index < (len(choices) if choices is not None else 26) else None


def _similarity(a: str, b: str) -> float:
    """PromptPG's `score_string_similarity`: the share of shared words (tokens stripped of punctuation)."""
    if a == b:
        return 2.0
    wa, wb = [w.strip(_PUNCT) for w in a.split()], [w.strip(_PUNCT) for w in b.split()]
    if len(wa) == 1 and len(wb) == 1:
        return 0.0
    return len(set(wa) & set(wb)) / max(len(wa), len(wb))


def _norm_tabmwp_choice(s: str, choices: list[str] | None) -> str | None:
    text = _norm_text(s)
    if _letter_index(s) is not None or text is None or not choices:
        return _norm_choice(s, choices)
    exact = _option_by_text(text, choices)
    if exact is not None:
        return exact
    texts = [_norm_text(c) or "" for c in choices]
    inside = [i for i, c in enumerate(texts) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", text)]
    inside = [i for i in inside if not any(texts[i] in texts[j] and texts[i] != texts[j] for j in inside)]
    if inside:  # naming one option wins; "A or B" names two: a hedge, whatever the word overlap says
        return chr(ord("A") + inside[0]) if len(inside) == 1 else None
    # PromptPG falls back to the most similar option, taking option A when nothing is similar at all
    # (numpy argmax of zeros); here only one best option with some overlap counts.
    scores = [_similarity(c, text) for c in texts]
    best = max(scores)
    return chr(ord("A") + scores.index(best)) if best > 0 and scores.count(best) == 1 else None


def _m3cot_region(text: str) -> str | None:
    """Where M3CoT's judge looks: the text after the last `[Answer]` (up to `[Rationale]`/`[Context]`),
    else the final `Answer:` line. Without either there is no answer (the official judge would search the
    whole chain of thought, crediting options it merely mentions)."""
    if "[Answer]" in text:
        region = text.split("[Answer]")[-1].split("[Rationale]")[0].split("[Context]")[0].strip()
        return region or None
    return final_answer(text)


def _norm_m3cot(s: str, choices: list[str] | None) -> str | None:
    """M3CoT's `judge_answer` order: `(X)`; else an option whose text occurs; else a standalone capital
    letter. Where the official code takes the last of several, several different ones are a hedge: None."""
    valid = [chr(ord("A") + i) for i in range(len(choices) if choices is not None else 26)]
    bare = s.strip(_PUNCT)
    if len(bare) == 1 and bare.isascii() and bare.isalpha():  # a bare letter, even if an option reads "B"
        return bare.upper() if bare.upper() in valid else None
    marked = {x.upper() for x in re.findall(r"\(([A-Za-z])\)", s)}
    if marked:
        return _single(list(marked)) if marked <= set(valid) else None
    low = s.lower()
    texts = [c.lower() for c in choices or []]
    hits = [i for i, c in enumerate(texts) if c.strip() and c in low]
    # An option inside a longer option that also occurs ("cat" in "black cat") is not a second candidate.
    hits = [i for i in hits if not any(texts[i] in texts[j] and texts[i] != texts[j] for j in hits)]
    if hits:
        return valid[hits[0]] if len(hits) == 1 else None
    # The official judge also accepts lower-case letters, i.e. the article "a" as option A: not here.
    tokens = set(re.sub(r"[\n.,!?:;]", " ", s).split())
    letters = [x for x in valid if x in tokens]
    return letters[0] if len(letters) == 1 else None


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


# An answer line that is arithmetic only (no words: "since 2 + 3 = 5" stays a hedge), ending in "= result".
_EQUATION = re.compile(r"^[^=A-Za-z]+(?:=[^=A-Za-z]+)*=[^=A-Za-z]+$")


def normalize(answer: str, answer_type: str, choices: list[str] | None = None) -> str | None:
    """Canonical string for a gold or predicted answer; None if it cannot be read as answer_type."""
    _check_type(answer_type)
    if answer_type in ("integer", "number") and _EQUATION.match(answer):  # "5 - 2 = 3": the result, not a hedge
        answer = answer.rsplit("=", 1)[1]
    if answer_type == "integer":
        return _norm_integer(answer)
    if answer_type == "number":
        return _norm_number(answer)
    if answer_type == "relaxed":
        s = answer.strip(_MARKUP)
        s = s[:-1] if s.endswith(".") else s
        return s.strip() or None
    if answer_type == "choice":
        return _norm_choice(answer, choices)
    if answer_type == "tabmwp_choice":
        return _norm_tabmwp_choice(answer, choices)
    if answer_type == "m3cot":
        return _norm_m3cot(answer, choices)
    return _norm_text(answer)


MAX_ANSWER_CHARS = 10_000  # a longer final answer is unparsable: reading a megabyte of numbers took seconds per answer


def parse_answer(text: str, answer_type: str, choices: list[str] | None = None) -> str | None:
    """The normalized final answer of a model's output, or None when there is none or it is unreadable."""
    _check_type(answer_type)
    raw = _m3cot_region(text) if answer_type == "m3cot" else final_answer(text)
    if raw is None or len(raw) > MAX_ANSWER_CHARS:  # no benchmark answer is this long: a runaway output
        return None
    return normalize(raw, answer_type, choices)


def _to_float(s: str) -> float | None:
    """ChartQA's reading of a number: "12%" is 0.12 (pix2struct); also "1,234" and "$5" (a lenience)."""
    s = s.replace(",", "").removeprefix("$")
    try:
        x = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        return None
    return x if math.isfinite(x) else None  # "nan"/"inf" are words, not numbers


def _matches(pred: str, gold: str, answer_type: str, choices: list[str] | None) -> bool:
    gold_n = normalize(gold, answer_type, choices)
    if gold_n is None:  # an unreadable gold scores nothing rather than crash a long run
        return False
    if answer_type == "number" and ":" not in pred + gold_n:  # times compare as strings, numbers as values
        try:
            return abs(float(pred) - float(gold_n)) <= 1e-6
        except ValueError:
            return False
    if answer_type == "relaxed":
        # Official ChartQA relaxed accuracy: "%" divides by 100, so gold "12%" matches pred "0.12" but gold
        # "12" does not match pred "12%"; a gold of 0 falls back to exact (case-insensitive) string match.
        p, g = _to_float(pred), _to_float(gold_n)
        if p is not None and g:
            return abs(p - g) / abs(g) <= RELAXED_TOLERANCE
        return pred.strip().lower() == gold_n.lower()
    return pred == gold_n


def is_correct(pred: str | None, gold: str | Sequence[str], answer_type: str,
               choices: list[str] | None = None) -> bool:
    """Whether an already-normalized prediction matches the raw gold answer (any of several gold answers,
    as ChartQA's official metric takes the max over targets)."""
    _check_type(answer_type)
    if pred is None:
        return False
    golds = [gold] if isinstance(gold, str) else list(gold)
    return any(_matches(pred, g, answer_type, choices) for g in golds)


def score(
    text: str, gold: str | Sequence[str], answer_type: str, choices: list[str] | None = None
) -> tuple[str | None, float]:
    """(parsed answer, reward): reward is 1.0 when the final answer of text matches gold, else 0.0."""
    pred = parse_answer(text, answer_type, choices)
    return pred, float(is_correct(pred, gold, answer_type, choices))
