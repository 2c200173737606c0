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
GOLDS = {"integer": "3", "number": "1234.5", "relaxed": "42", "choice": "B", "text": "red cube",
         "tabmwp_choice": "B", "m3cot": "B"}


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
        # Two different values are a hedge, not an answer (this used to read the first number: "5", "6").
        ("There are five, not 6", None), ("6, not five", None), ("five (5)", "5"), ("3 or 3.0", "3"),
        ("1,000", "1000"), ("6/2", "3"), ("7 or 8", None), ("7:40", None),
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
        ("2.34567", "2.346"), (".5", "0.5"), ("-0", "0"), ("\u22124", "-4"),
        ("3, 4", None),  # a hedge (this used to read the first number, "3")
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


# --- Official-metric edge cases per benchmark --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, gold, correct",
    [
        # The shared scorer used to read the FIRST number, so "7:40 P.M." was 7 and matched "7:25".
        ("Answer: 7:40 P.M.", "7:25", False),
        ("Answer: 7:25 P.M.", "7:25 P.M.", True),
        ("Answer: 7:25 pm", "7:25 P.M.", True),
        ("Answer: 19:25", "7:25 P.M.", True),  # times compare as times of day
        ("Answer: 7:25 A.M.", "7:25 P.M.", False),
        ("Answer: 12:15 A.M.", "0:15", True),
        ("Answer: 7:25 or 7:40", "7:25", False),
        ("Answer: 7:25, 20 minutes later", "7:25", False),
        ("Answer: 7", "7:25", False),
        ("Answer: 7 or 8", "7", False),  # hedges get no credit
        ("Answer: 7 or 8", "8", False),
        ("Answer: between 3 and 4", "3", False),
        ("Answer: $3.50 per pound", "3.50", True),  # units and "$" are dropped
        ("Answer: 12 games per year", "12", True),
        ("Answer: 4,656", "4656", True),  # commas in thousands
        ("Answer: 4656", "4,656", True),
        ("Answer: 1,522.81", "1522.81", True),
        ("Answer: 3/10", "0.3", True),  # fractions are divided and rounded to 3 places
        ("Answer: 0.3", "3/10", True),
        ("Answer: 48/103", "0.466", True),
        ("Answer: 0.47", "48/103", False),
        ("Answer: \\frac{3}{10}", "3/10", True),  # PromptPG turns \frac{a}{b} into a/b
        ("Answer: 3.30", "3.3", True),
        ("Answer: 0.75 (3/4)", "3/4", True),  # two spellings of one value are one candidate
        ("Answer: 5 (since 2 + 3 = 5)", "5", False),  # several values: not a number answer
        ("Answer: 0", "0", True),
        ("Answer: -0", "0", True),
    ],
)
def test_score_number_edge_cases(text, gold, correct):
    assert score(text, gold, "number")[1] == float(correct)


def test_integer_hedges_and_times_are_wrong():
    assert score("Answer: 3 or 4", "3", "integer") == (None, 0.0)
    assert score("Answer: three (3)", "3", "integer") == ("3", 1.0)
    assert score("Answer: 7:40", "7", "integer") == (None, 0.0)


@pytest.mark.parametrize(
    "raw, expected",
    [("2:35 P.M.", "14:35"), ("2:35 pm", "14:35"), ("The train leaves at 9:05 a.m.", "9:05"), ("12:30 PM", "12:30"),
     ("13:30 P.M.", None), ("7:40 and 8:00", None), ("3:2", None)],
)
def test_normalize_number_times(raw, expected):
    assert normalize(raw, "number") == expected


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        ("0", "0", True), ("0.0", "0", False), ("zero", "0", False),  # a zero target is exact match
        ("0.57", "0.57", True), ("0.6", "0.57", False), ("0.59", "0.57", True),
        ("57%", "0.57", True),  # "%" divides the prediction by 100
        ("57", "57%", False),
        ("Green Line", "green line", True),  # exact match is case-insensitive
        ("green", "green line", False),
        ("7 or 8", "7", False),
    ],
)
def test_relaxed_edge_cases(pred, gold, correct):
    assert is_correct(normalize(pred, "relaxed"), gold, "relaxed") is correct


def test_relaxed_max_over_targets():
    assert is_correct("105", ["7", "100"], "relaxed") is True
    assert is_correct("106", ["7", "100"], "relaxed") is False
    assert score("Answer: yes", ("No", "Yes"), "relaxed") == ("yes", 1.0)
    assert is_correct("7", [], "relaxed") is False


TAB_CHOICES = ["Word Processing class", "Computer Finance class", "Web Page Design class", "Computer Graphics class"]
TIME_CHOICES = ["2:25 P.M.", "3:50 P.M.", "2:35 P.M.", "4:00 P.M."]


@pytest.mark.parametrize(
    "answer, choices, gold, correct",
    [
        ("C", TAB_CHOICES, "Web Page Design class", True),  # gold is the option TEXT in TabMWP
        ("(C)", TAB_CHOICES, "Web Page Design class", True),
        ("Web Page Design class", TAB_CHOICES, "Web Page Design class", True),
        ("web page design class.", TAB_CHOICES, "Web Page Design class", True),
        ("Web Page Design", TAB_CHOICES, "Web Page Design class", True),  # the most similar option
        ("the Web Design class", TAB_CHOICES, "Web Page Design class", True),
        ("class", TAB_CHOICES, "Web Page Design class", False),  # four options tie: no pick
        ("Gardening", TAB_CHOICES, "Web Page Design class", False),  # PromptPG would take option A here
        ("Gardening", TAB_CHOICES, "Word Processing class", False),
        ("E", TAB_CHOICES, "Web Page Design class", False),  # out of range: never a random option
        ("Web Page Design class or Computer Graphics class", TAB_CHOICES, "Web Page Design class", False),
        ("2:35 pm", TIME_CHOICES, "2:35 P.M.", True),
        ("14:35", TIME_CHOICES, "2:35 P.M.", True),
        ("2:35", TIME_CHOICES, "2:35 P.M.", False),
        ("surplus", ["shortage", "surplus"], "surplus", True),
        ("There is a surplus", ["shortage", "surplus"], "surplus", True),
        ("shortage or surplus", ["shortage", "surplus"], "surplus", False),
        ("yes", ["yes", "no"], "no", False),
    ],
)
def test_score_tabmwp_choice(answer, choices, gold, correct):
    assert score(f"Solution: ...\nAnswer: {answer}", gold, "tabmwp_choice", choices)[1] == float(correct)


def test_plain_choice_has_no_similarity_rule():
    # GeoQA (and the generic type) take a letter or an option's exact text only.
    assert normalize("Web Page Design", "choice", TAB_CHOICES) is None
    assert normalize("Web Page Design class", "choice", TAB_CHOICES) == "C"
    assert normalize("30.0", "choice", ["30.0", "40.0", "45.0", "60.0"]) == "A"


M3_CHOICES = ["To scare away trespassers", "To bring attention to the city's tourist attractions",
              "To honor a local legend", "To discourage people from walking across the bridge"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning...\nAnswer: (B)", "B"),
        ("Reasoning...\nAnswer: B", "B"),
        ("Reasoning...\nAnswer: (b) To bring attention", "B"),
        ("[Answer] (C) To honor a local legend [Rationale] (A) is wrong", "C"),
        ("Reasoning (A) is out.\n[Answer] To honor a local legend", "C"),  # the option's text
        ("Answer: To honor a local legend", "C"),
        ("Answer: The answer is D.", "D"),  # a standalone capital letter
        ("Answer: (A) or (B)", None),  # a hedge: the official judge would take the last, (B)
        ("Answer: (E)", None),  # out of range
        ("Answer: a", "A"),  # a bare letter
        ("Answer: a local legend", None),  # the article "a" is not option A
        ("The answer is (B).", None),  # no answer marker: not searched in the chain of thought
        ("Answer: none of them", None),
    ],
)
def test_parse_m3cot(text, expected):
    assert parse_answer(text, "m3cot", M3_CHOICES) == expected


def test_m3cot_nested_option_texts():
    choices = ["cat", "black cat", "dog"]
    assert parse_answer("Answer: a black cat", "m3cot", choices) == "B"
    assert parse_answer("Answer: cat or dog", "m3cot", choices) is None
    assert score("Answer: (B)", "B", "m3cot", choices) == ("B", 1.0)
    assert score("Answer: (A)", "B", "m3cot", choices) == ("A", 0.0)
    # An option that reads like a letter does not shadow the letters themselves.
    assert score("Answer: A", "A", "m3cot", ["B", "A"]) == ("A", 1.0)


@pytest.mark.parametrize("text, gold, answer_type, reward", [
    ("Answer: 5 - 2 = 3", "3", "integer", 1.0),  # an equation's result is its answer
    ("Answer: 5 - 2 = 3", "5", "integer", 0.0),
    ("Answer: $1.50 + $2.25 = $3.75", "3.75", "number", 1.0),
    ("Answer: 3 = 4 or 5", "4", "integer", 0.0),  # a hedge after the sign is still a hedge
])
def test_an_equation_scores_by_its_result(text, gold, answer_type, reward):
    assert score(text, gold, answer_type)[1] == reward
