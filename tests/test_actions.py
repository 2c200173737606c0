"""The MiniWoB++ action grammar, pure (no browser): parsing, the formatter's round trip, the teacher's text."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from envs.miniwob.actions import (ALLOWED_KEYS, Action, ActionError, action_line, format_action, key_name,
                                  parse_action, parse_key)
from envs.miniwob.dom import Element
from envs.miniwob.teacher import TEACHERS, teach

# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text, canonical", [
    ("Action: click(ref=12)", "click(ref=12)"),
    ("action:click(12)", "click(ref=12)"),
    ("ACTION: Click( ref = 12 )", "click(ref=12)"),
    ('Action: click(ref="7")', "click(ref=7)"),
    ("It is element 3.\nAction: click(ref=3)\nOn second thought:\nAction: click(ref=7).", "click(ref=7)"),
    ("**Action:** `click(ref=4)`", "click(ref=4)"),
    ('Action: type(ref=5, "hello")', 'type(ref=5, "hello")'),
    ("Action: type(ref=5, 'it\\'s')", 'type(ref=5, "it\'s")'),
    ('Action: type(ref=5, "say \\"hi\\"")', 'type(ref=5, "say \\"hi\\"")'),
    ('Action: type(5, "a, b (c)")', 'type(ref=5, "a, b (c)")'),
    ('Action: type(text="x", ref=5)', 'type(ref=5, "x")'),
    ("Action: type(ref=5, hello)", 'type(ref=5, "hello")'),
    ('Action: type(ref=5, "")', 'type(ref=5, "")'),
    ('Action: type("hello")', 'type("hello")'),
    ('Action: press("Enter")', 'press("Enter")'),
    ("Action: press('return')", 'press("Enter")'),
    ('Action: press("tab")', 'press("Tab")'),
    ('Action: press("up")', 'press("ArrowUp")'),
    ('Action: press("<Backspace>")', 'press("Backspace")'),
    ('Action: press(" ")', 'press("Space")'),
    ("Action: press(a)", 'press("a")'),
    ("Action: press('ctrl+a')", 'press("ctrl+a")'),
    ('Action: press("Ctrl+C")', 'press("ctrl+c")'),
    ("Action: click_xy(80, 120)", "click_xy(80, 120)"),
    ("Action: click_xy(80.5,120)", "click_xy(80.5, 120)"),
    ("Action: click_xy(x=1, y=2)", "click_xy(1, 2)"),
    ("Action: done()", "done()"),
    ("Action: DONE()", "done()"),
])
def test_parse_valid(text, canonical):
    action = parse_action(text)
    assert str(action) == format_action(action) == canonical
    assert str(parse_action(f"Action: {canonical}")) == canonical  # the canonical form parses to itself


@pytest.mark.parametrize("text", [
    "", "click(ref=1)", "The action is click(ref=1)", "Action: ", "Action: clik(ref=1)", "Action: click()",
    "Action: click(ref=a)", "Action: click(ref=1.5)", "Action: click(ref=1, 2)", "Action: click(ref=1",
    'Action: type(ref=5, "abc)', "Action: type(ref=1, ref=2)", "Action: type()", 'Action: type(ref=1, "😀")',
    'Action: press("F13")', 'Action: press("ctrl+z")', 'Action: press("hyper+a")', "Action: press()",
    "Action: click_xy(1)", "Action: click_xy(a, b)", "Action: click_xy(1, 2, 3)", "Action: done(1)",
])
def test_parse_invalid(text):
    with pytest.raises(ActionError):
        parse_action(text)


# ------------------------------------------------------------------ the formatter's round trip

refs = st.integers()
# Every BMP character (surrogates included) but the line break: an action is one line (see actions.py). The
# grammar's own punctuation is drawn often, since that is where escaping can go wrong.
texts = st.text(st.one_of(st.sampled_from('"\'\\,()= \t\r`*_;.:'),
                          st.characters(max_codepoint=0xFFFF, exclude_characters="\n", exclude_categories=())))
# Coordinates the `%g` formatter writes exactly: at most 6 significant digits, no exponent (0 or 1e-4 <= |v| < 1e6).
coords = st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(-999_999, 999_999), st.integers(-10, 0)).filter(
    lambda v: v == 0 or 1e-4 <= abs(v) < 1e6)

actions = st.one_of(
    st.builds(lambda r: Action("click", ref=r), refs),
    st.builds(lambda r, t: Action("type", ref=r, text=t), refs, texts),
    st.builds(lambda t: Action("type", text=t), texts),
    st.builds(lambda k: Action("press", key=k), st.sampled_from(ALLOWED_KEYS)),
    st.builds(lambda x, y: Action("click_xy", x=x, y=y), coords, coords),
    st.just(Action("done")),
)


@settings(max_examples=500)
@given(actions)
@example(Action("type", ref=5, text='say "hi" \\ to a\\"b, (c)'))
@example(Action("type", text="\\"))
@example(Action("type", ref=0, text=""))
@example(Action("click_xy", x=0.0001, y=999_999.0))
def test_every_formatted_action_parses_back_to_itself(action):
    text = format_action(action)
    assert str(action) == text
    assert parse_action(action_line(action)) == action
    assert parse_action(f"Some reasoning.\n{action_line(action)}\n") == action
    assert format_action(parse_action(action_line(action))) == text


@pytest.mark.parametrize("key", ALLOWED_KEYS)
def test_every_allowed_key_round_trips(key):
    assert parse_key(key_name(key)) == key
    assert parse_action(action_line(Action("press", key=key))) == Action("press", key=key)


@given(st.floats(min_value=-1e5, max_value=1e5, allow_nan=False))
def test_canonical_click_xy_text_is_a_fixed_point(v):
    """Any coordinate is written to 6 significant digits; that text then reads and writes back unchanged."""
    if v != 0 and abs(v) < 1e-4:
        return  # written with an exponent, which the parser rejects (test_tiny_or_huge_coordinates below)
    text = format_action(Action("click_xy", x=v, y=1.0))
    assert format_action(parse_action(f"Action: {text}")) == text


def test_a_text_with_a_line_break_cannot_be_written():
    """The action is the rest of one line: a line break ends it, so the grammar has no way to type one."""
    with pytest.raises(ActionError):
        parse_action(action_line(Action("type", ref=1, text="a\nb")))


@pytest.mark.parametrize("v, text", [(1e6, "1000000"), (1e-5, "0.00001"), (1.5e7, "15000000")])
def test_tiny_or_huge_coordinates(v, text):
    action = parse_action(f"Action: click_xy({v:f}, 1)")
    assert parse_action(action_line(action)) == action and str(action) == f"click_xy({text}, 1)"


# ------------------------------------------------------------------ the teacher writes through the formatter

def _el(ref: int, tag: str, text: str = "", value: str = "", parent: int = 0, classes: str = "") -> Element:
    return Element(ref, parent, tag, text, value, classes, 1, 2, 3, 4, False)


FORM = {1: _el(1, "input_text", value='o"ld'), 2: _el(2, "input_password"), 3: _el(3, "button", "Login"),
        4: _el(4, "button", "Submit"), 8: _el(8, "button", 'say "hi"')}
BOXES = {1: _el(1, "label", 'a"b'), 2: _el(2, "input_checkbox", parent=1), 3: _el(3, "label", "c\\d"),
         4: _el(4, "input_checkbox", value="True", parent=3), 5: _el(5, "button", "Submit")}


@pytest.mark.parametrize("task, fields, els, expected", [  # texts the teacher wrote before the package split
    ("click-button", {"target": 'say "hi"'}, FORM,
     'The task asks to click the button "say \\"hi\\"". It is element 8.\nAction: click(ref=8)'),
    ("enter-text", {"target": 'say "hi"'}, FORM,
     'The text field (element 1) must contain "say \\"hi\\"" and holds "o\\"ld".\nAction: type(ref=1, "say \\"hi\\"")'),
    ("enter-text", {"target": 'o"ld'}, FORM,
     'All fields are filled in, so click the "Submit" button (element 4).\nAction: click(ref=4)'),
    ("login-user", {"username": 'u\\"', "password": "p,()"}, FORM,
     'The username field (element 1) must contain "u\\\\\\"" and holds "o\\"ld".\nAction: type(ref=1, "u\\\\\\"")'),
    ("login-user", {"target": "x"}, FORM, "The task does not name the username.\nAction: done()"),
    ("enter-text", {"target": "x"}, BOXES, "I cannot find the text field on the page.\nAction: done()"),
    ("enter-password", {"target": "x"}, FORM, "I cannot find the two password fields on the page.\nAction: done()"),
    ("click-checkboxes", {}, BOXES,
     'Checkbox "c\\\\d" (element 4) must be unchecked and is not.\nAction: click(ref=4)'),
    ("click-checkboxes", {"target": 'a"b', "target 2": "c\\d"}, BOXES,
     'Checkbox "a\\"b" (element 2) must be checked and is not.\nAction: click(ref=2)'),
])
def test_teacher_text(task, fields, els, expected):
    assert teach(task, fields, els) == expected
    assert expected.splitlines()[-1] == action_line(parse_action(expected))


def test_teacher_scripts_return_actions():
    for task in ("click-button", "enter-text", "login-user"):
        _, action = TEACHERS[task]({"target": "Login", "username": "u", "password": "p"}, FORM)
        assert isinstance(action, Action)


def test_teacher_without_a_script():
    with pytest.raises(NotImplementedError):
        teach("book-flight", {}, {})
