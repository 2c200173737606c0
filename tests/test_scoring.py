import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.scoring import (
    ANSWER_FORMATS,
    ANSWER_TYPES,
    final_answer,
    is_correct,
    normalize,
    parse_answer,
    score,
)

CHOICES = ["deficit", "surplus", "neither"]
GOLDS = {"integer": "3", "number": "1234.5", "relaxed": "42", "choice": "B", "text": "red cube"}


def test_formats_cover_every_type():
    assert set(ANSWER_FORMATS) == set(ANSWER_TYPES)
    assert all(fmt.startswith("Answer: <") for fmt in ANSWER_FORMATS.values())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The cubes are red.\nAnswer: 4", "4"),
        ("answer:   seven  \n", "seven"),
        ("ANSWER: B", "B"),
        ("Answer:\n4", "4"),  # R3V teacher data puts the answer on the next line
        ("Answer:\n\n  \n 4 \nmore", "4"),
        ("Answer: 2\nwait, recount.\nAnswer: 3", "3"),  # the last one wins
        ("Answer: 2 then Answer: 5", "5"),
        ("**Answer:** 4", "** 4"),
        ("**Answer**: 4", "4"),
        ("no keyword here", None),
        ("", None),
        ("Answer:", None),
        ("Answer:   \n\n  ", None),
        ("Answer 4", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


def test_final_answer_custom_keyword():
    assert final_answer("Answer: 1\nFinal: 2", keyword="Final") == "2"
    assert final_answer("Answer: 1", keyword="Final") is None
    assert final_answer("a.b: 1", keyword=".") is None  # the keyword is literal, not a regex


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3", "3"), ("3.", "3"), ("3.0", "3"), ("+3", "3"), ("-2", "-2"), (" 3 objects", "3"),
        ("**3**", "3"), ("$3", "3"), ("three", "3"), ("Zero", "0"), ("twenty cubes", "20"),
        ("There are five, not 6", "5"), ("6, not five", "6"), ("1,000", "1000"), ("6/2", "3"),
        ("答案是3", "3"),
        ("3.5", None), ("3/4", None), ("3/0", None), ("none", None), ("N/A", None), ("", None),
        ("someone", None), ("v1.5", None), ("9" * 5000, None),
    ],
)
def test_normalize_integer(raw, expected):
    assert normalize(raw, "integer") == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("$1,234.50", "1234.5"), ("The answer is $1,234.50.", "1234.5"), ("$1,234.50 dollars", "1234.5"),
        ("3/4", "0.75"), ("-3/2", "-1.5"), ("1/3", "0.333"), ("12%", "12"), ("5.", "5"), ("5.000", "5"),
        ("2.34567", "2.346"), (".5", "0.5"), ("-0", "0"), ("\u22124", "-4"), ("3, 4", "3"),
        ("3/0", None), ("twelve", None), ("N/A", None), ("", None), ("9" * 400, None),
    ],
)
def test_normalize_number(raw, expected):
    assert normalize(raw, "number") == expected


@pytest.mark.parametrize(
    "text, gold, correct",
    [
        ("Answer: $1,234.50", "1234.5", True),
        ("Answer: 1234.5", "$1,234.50", True),
        ("Answer: 3/4", "0.75", True),
        ("Answer: 0.75", "3/4", True),
        ("Answer: 12%", "12", True),  # "%" is dropped on both sides
        ("Answer: 12", "12%", True),
        ("Answer: 0.3333", "1/3", True),  # equal after rounding to 3 places
        ("Answer: 0.76", "3/4", False),
        ("Answer: 1234", "1234.5", False),
        ("Answer: -1.5", "1.5", False),
    ],
)
def test_score_number(text, gold, correct):
    assert score(text, gold, "number")[1] == float(correct)


@pytest.mark.parametrize(
    "raw, expected",
    [("12%", "12%"), ("  Yes. ", "Yes"), ("**42**", "42"), ("1,234", "1,234"), ("", None), ("  .", None)],
)
def test_normalize_relaxed(raw, expected):
    assert normalize(raw, "relaxed") == expected


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        ("104", "100", True),  # 4% off
        ("96", "100", True),
        ("105", "100", True),  # the 5% boundary is inclusive
        ("106", "100", False),  # 6% off
        ("94", "100", False),
        ("0.12", "12%", True),  # official behaviour: gold "12%" reads as 0.12
        ("12%", "12%", True),
        ("12%", "12", False),  # official behaviour: pred "12%" reads as 0.12, gold "12" as 12
        ("12", "12%", False),
        ("0", "0", True),  # gold 0 falls back to exact string match
        ("0.0", "0", False),
        ("0.01", "0", False),
        ("$1,234", "1234", True),
        ("Yes", "yes", True),
        ("yes", "no", False),
        ("nan", "nan", True),  # not a number to ChartQA's reader, so compared as a string
        ("nan", "5", False),
    ],
)
def test_is_correct_relaxed(pred, gold, correct):
    assert is_correct(pred, gold, "relaxed") is correct


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("(B) surplus", "B"), ("Option B", "B"),
        ("b", "B"), ("**C**", "C"), ("[A]", "A"), ("B: surplus", "B"), ("surplus", "B"), ("SURPLUS.", "B"),
        ("the deficit", "A"),
        ("D", None), ("(Z)", None), ("I think B", None), ("surplus or deficit", None), ("", None),
        ("None", None), ("N/A", None),
    ],
)
def test_normalize_choice(raw, expected):
    assert normalize(raw, "choice", CHOICES) == expected


def test_choice_without_options_accepts_any_letter():
    assert normalize("(Z)", "choice") == "Z"
    assert normalize("surplus", "choice") is None
    assert normalize("AB", "choice") is None


@pytest.mark.parametrize(
    "text, gold, correct",
    [
        ("So it is (B).\nAnswer: (B)", "B", True),
        ("Answer: (B)", "surplus", True),  # gold given as the option text
        ("Answer: surplus", "(B)", True),
        ("Answer: (A)", "B", False),
        ("Answer: D", "B", False),  # out of range is wrong, never a random option
        ("Answer: (B)", "not an option", False),
    ],
)
def test_score_choice(text, gold, correct):
    assert score(text, gold, "choice", CHOICES)[1] == float(correct)


def test_out_of_range_letter_never_scores():
    # R3V's reference code mapped an invalid letter to a random option; this must be deterministic.
    for gold in "ABC":
        assert score("Answer: (E)", gold, "choice", CHOICES) == (None, 0.0)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Red", "red"), ("  the   Red Cube. ", "red cube"), ('"a cylinder"', "cylinder"),
        ("**An apple**", "apple"),
        ("theater", "theater"), ("The", "the"), ("**", None), ("", None),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize(raw, "text") == expected


def test_score_text():
    assert score("Answer: The red cube.", "red cube", "text") == ("red cube", 1.0)
    assert score("Answer: red sphere", "red cube", "text") == ("red sphere", 0.0)


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_no_answer_line_scores_nothing(answer_type):
    gold = GOLDS[answer_type]
    text = f"I reason that it is {gold}. The result is {gold}."  # the right answer, but no final line
    assert parse_answer(text, answer_type, CHOICES) is None
    assert score(text, gold, answer_type, CHOICES) == (None, 0.0)


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_right_answer_scores(answer_type):
    gold = GOLDS[answer_type]
    assert score(f"Thinking...\nAnswer: {gold}", gold, answer_type, CHOICES)[1] == 1.0


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
@pytest.mark.parametrize(
    "text",
    [
        "", "Answer:", "Answer: None", "Answer: N/A", "Answer: null", "None", "N/A",
        "Answer: \u00bfqu\u00e9? \U0001f600 \u7b54\u6848", "Answer: \x00\ufffd", "Answer: " + "x" * 100_000,
        "Answer: " * 10_000, "".join(chr(i) for i in range(0x2000, 0x2400)), "Answer: \n" * 50,
    ],
)
def test_garbage_never_raises_or_scores(answer_type, text):
    pred, reward = score(text, GOLDS[answer_type], answer_type, CHOICES)
    assert reward == 0.0
    assert pred is None or isinstance(pred, str)


def test_none_prediction_is_wrong():
    for answer_type in ANSWER_TYPES:
        assert is_correct(None, GOLDS[answer_type], answer_type, CHOICES) is False


@pytest.mark.parametrize("call", [
    lambda: normalize("3", "float"),
    lambda: parse_answer("Answer: 3", "Integer"),
    lambda: is_correct("3", "3", "int"),
    lambda: score("no answer", "3", "bogus"),
])
def test_unknown_answer_type_raises(call):
    with pytest.raises(ValueError, match="unknown answer_type"):
        call()


@pytest.mark.parametrize("answer_type", ["integer", "number", "choice"])
@pytest.mark.parametrize("raw", ["3", "$1,234.50", "-3/2", "(B) surplus", "three", "12%", "b"])
def test_normalize_is_idempotent(answer_type, raw):
    once = normalize(raw, answer_type, CHOICES)
    assert once is None or normalize(once, answer_type, CHOICES) == once


def _check_score(text: str, gold: str, answer_type: str) -> None:
    pred, reward = score(text, gold, answer_type, CHOICES)
    assert pred is None or isinstance(pred, str)
    assert reward in (0.0, 1.0)
    assert reward == 0.0 or pred is not None


_ALPHABET = "0123456789$%,./-+ ()ABCabcxyz\n\t*:Answer\u00e9\u2212\u4e00\U0001f600"


def test_random_strings_never_raise():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.5:
            text = "Answer: " + text
        for answer_type in ANSWER_TYPES:
            _check_score(text, GOLDS[answer_type], answer_type)


@settings(max_examples=300, deadline=None)
@given(text=st.text(), gold=st.text(), prefix=st.sampled_from(["", "Answer: ", "Answer:\n"]))
def test_any_text_and_gold_never_raise(text, gold, prefix):
    for answer_type in ANSWER_TYPES:
        _check_score(prefix + text, gold, answer_type)
