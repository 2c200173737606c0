"""The scripted teacher: a one-sentence rationale and an action for the current page of a default task.

Each script reads only the utterance's fields and the DOM (not the pixels). Actions are built as `Action`s and
written by `action_line`, the same formatter whose output the parser reads, so the two cannot drift.
"""

from __future__ import annotations

from typing import Callable

from envs.miniwob.actions import Action, action_line, quote
from envs.miniwob.dom import Element

Plan = tuple[str, Action]  # (rationale, action)


def _find(els: dict[int, Element], what: str, pred: Callable[[Element], bool]) -> Element:
    for e in els.values():
        if pred(e):
            return e
    raise LookupError(f"I cannot find {what} on the page")


def _click(intro: str, e: Element) -> Plan:
    return f"{intro} It is element {e.ref}.", Action("click", ref=e.ref)


def _fill(todo: list[tuple[Element, str, str]], submit: Element) -> Plan:
    """Type each wanted value whose field does not hold it yet, one per step; then submit."""
    for el, want, name in todo:
        if el.value != want:
            state = "is empty" if not el.value else f"holds {quote(el.value)}"
            return (f"The {name} (element {el.ref}) must contain {quote(want)} and {state}.",
                    Action("type", ref=el.ref, text=want))
    return (f"All fields are filled in, so click the {quote(submit.text)} button (element {submit.ref}).",
            Action("click", ref=submit.ref))


def _button(els: dict[int, Element], text: str | None = None) -> Element:
    return _find(els, f"the button {quote(text)}" if text else "a button",
                 lambda e: e.tag == "button" and (text is None or e.text == text))


def _checkboxes(f: dict[str, str], els: dict[int, Element]) -> Plan:
    wanted = {v for k, v in f.items() if k.startswith("target")}
    for box in (e for e in els.values() if e.tag == "input_checkbox"):
        label = els[box.parent].text if box.parent in els else ""
        want, checked = label in wanted, box.value == "True"
        if want != checked:
            state = "checked" if want else "unchecked"
            return (f"Checkbox {quote(label)} (element {box.ref}) must be {state} and is not.",
                    Action("click", ref=box.ref))
    submit = _button(els, "Submit")
    return (f"Exactly the requested checkboxes are checked, so click \"Submit\" (element {submit.ref}).",
            Action("click", ref=submit.ref))


def _passwords(f: dict[str, str], els: dict[int, Element]) -> Plan:
    pw = [e for e in els.values() if e.tag == "input_password"]
    if len(pw) < 2:
        raise LookupError("I cannot find the two password fields on the page")
    return _fill([(pw[0], f["target"], "password field"), (pw[1], f["target"], "verify password field")],
                 _button(els, "Submit"))


# task -> (fields, elements) -> (rationale, action); each reads only the utterance's fields and the DOM
TEACHERS: dict[str, Callable[[dict[str, str], dict[int, Element]], Plan]] = {
    "click-test": lambda f, els: _click("The task asks to click the button.", _button(els)),
    "click-button": lambda f, els: _click(f"The task asks to click the button {quote(f['target'])}.",
                                          _button(els, f["target"])),
    "click-link": lambda f, els: _click(
        f"The task asks to click the link {quote(f['target'])}.",
        _find(els, "the link", lambda e: e.tag in ("span", "a") and e.text == f["target"])),
    "focus-text": lambda f, els: _click(
        "The task asks to focus the textbox; clicking the text field focuses it.",
        _find(els, "a text field", lambda e: e.tag in ("input_text", "textarea"))),
    "click-tab": lambda f, els: _click(
        f"The task asks to click Tab #{f['target']}.",
        _find(els, "the tab", lambda e: e.tag == "a" and e.text == f"Tab #{f['target']}")),
    "click-dialog": lambda f, els: _click(
        'The dialog closes with its "x" button in the title bar.',
        _find(els, 'the "x" button', lambda e: e.tag == "button" and ("close" in e.classes or e.text == "Close"))),
    "enter-text": lambda f, els: _fill(
        [(_find(els, "the text field", lambda e: e.tag == "input_text"), f["target"], "text field")],
        _button(els, "Submit")),
    "login-user": lambda f, els: _fill(
        [(_find(els, "the username field", lambda e: e.tag == "input_text"), f["username"], "username field"),
         (_find(els, "the password field", lambda e: e.tag == "input_password"), f["password"], "password field")],
        _button(els, "Login")),
    "enter-password": _passwords,
    "click-checkboxes": _checkboxes,
}


def teach(task: str, fields: dict[str, str], els: dict[int, Element]) -> str:
    """The teacher's text for one page: its rationale, then the `Action:` line. When the utterance lacks a
    field or the page an element that the script needs, the teacher says so and gives up with done()."""
    if task not in TEACHERS:
        raise NotImplementedError(f"no scripted teacher for MiniWoB++ task {task!r}")
    try:
        rationale, action = TEACHERS[task](fields, els)
    except KeyError as e:  # KeyError is a LookupError: it must be caught first
        rationale, action = f"The task does not name the {e.args[0]}.", Action("done")
    except LookupError as e:
        rationale, action = f"{e.args[0]}.", Action("done")
    return f"{rationale}\n{action_line(action)}"
