"""The action grammar: how the model's text becomes an `Action`, and the one formatter that writes action text.

The model's output ends with a line `Action: <action>`; the LAST such line counts (the keyword is
case-insensitive, markdown bold/backticks around it are tolerated). Actions:

    click(ref=12)           click element 12 of the DOM listing (`click(12)` works too)
    type(ref=5, "hello")    set the text of element 5: focus it, select any text it holds, type (replacing it)
    type("hello")           type into the focused element
    press("Enter")          a key or combination: Enter, Tab, Backspace, Delete, Space, PageUp, PageDown,
                            ArrowUp/Down/Left/Right (or Up/...), a single character, ctrl+a/c/x/v
    click_xy(80, 120)       click at page coordinates (x, y), the same pixels as the screenshot
    done()                  give up: the episode ends, unsolved

Strings take 'single' or "double" quotes; a backslash escapes the next character (`"say \\"hi\\""`).

Limits of the written form (what `format_action` then `parse_action` gives back unchanged):
- An action is one line, so a text cannot hold a line break ("\\n"); nor characters outside the BMP, which
  the browser cannot type.
- `click_xy` coordinates are written with 6 significant digits (`%g`), never with an exponent.

`format_action` (also `str(action)`) is the only writer of action text: the environment's canonical
`info["parsed"]`, the "Last action" of the prompt and the scripted teacher's actions all come from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from miniwob.constants import DEFAULT_ALLOWED_KEYS, WEBDRIVER_SPECIAL_KEYS

ACTION_PREFIX = "Action: "  # how `action_line` starts the line that `parse_action` looks for


class ActionError(ValueError):
    """The model's text holds no valid action."""


@dataclass(frozen=True)
class Action:
    """One action of the grammar; `str(action)` is its canonical text (`format_action`)."""

    kind: str  # click | type | press | click_xy | done
    ref: int | None = None
    text: str | None = None
    key: str | None = None  # miniwob key syntax, e.g. "<Enter>", "C-a"
    x: float | None = None
    y: float | None = None

    def __str__(self) -> str:
        return format_action(self)


def quote(s: str) -> str:
    """A double-quoted string literal of the action grammar (and of the DOM listing)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_action(a: Action) -> str:
    """The canonical text of `a`, e.g. `type(ref=5, "hello")`: the one place that writes the grammar."""
    if a.kind == "click":
        return f"click(ref={a.ref})"
    if a.kind == "type":
        return f"type(ref={a.ref}, {quote(a.text)})" if a.ref is not None else f"type({quote(a.text)})"
    if a.kind == "press":
        return f"press({quote(key_name(a.key))})"
    if a.kind == "click_xy":
        return f"click_xy({_number(a.x)}, {_number(a.y)})"
    return "done()"


def _number(v: float) -> str:
    """`%g` without its exponent form (1e+06, 1e-05), which the grammar does not read."""
    text = f"{v:g}"
    return np.format_float_positional(float(text), trim="-") if "e" in text else text


def action_line(a: Action) -> str:
    """The line `Action: <action>` that ends a model output (or a teacher's) and that `parse_action` reads."""
    return ACTION_PREFIX + format_action(a)


# Spaces inside the line only ([^\S\n]): a class that also matched "\n" would scan on from every line start over
# all the blank lines after it, quadratic time on a model output of a megabyte of newlines.
_ACTION_LINE = re.compile(r"^(?:[^\S\n]|[>*#`_-])*action(?:[*_`]|[^\S\n])*:(.*)$", re.I | re.M)
_CALL = re.compile(r"(\w+)\s*\((.*)\)", re.S)
_ARG = re.compile(r"""\s*(?:(\w+)\s*=\s*)?("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,]*?)\s*(?:,|$)""", re.S)
_INT = re.compile(r"[+-]?\d+")
_NUM = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")

_MODIFIERS = {"ctrl": "C-", "control": "C-", "shift": "S-", "alt": "A-", "option": "A-", "meta": "M-",
              "cmd": "M-", "command": "M-"}
_SPECIAL = {k[1:-1].lower(): k for k in WEBDRIVER_SPECIAL_KEYS}
_SPECIAL.update({"return": "<Enter>", "up": "<ArrowUp>", "down": "<ArrowDown>", "left": "<ArrowLeft>",
                 "right": "<ArrowRight>", "del": "<Delete>", "esc": "<Escape>", "pgup": "<PageUp>",
                 "pgdn": "<PageDown>", " ": "<Space>"})
ALLOWED_KEYS = tuple(DEFAULT_ALLOWED_KEYS)  # miniwob's safe list (Humphreys et al., 2022)


def key_name(key: str) -> str:
    """miniwob key syntax -> the grammar's: "<Enter>" -> "Enter", "C-a" -> "ctrl+a"."""
    mods = []
    while key[:2] in ("C-", "S-", "A-", "M-") and len(key) > 2:
        mods.append({"C-": "ctrl", "S-": "shift", "A-": "alt", "M-": "meta"}[key[:2]])
        key = key[2:]
    return "+".join([*mods, key[1:-1] if key.startswith("<") and len(key) > 2 else key])


def parse_key(name: str) -> str:
    """The grammar's key name -> miniwob key syntax; ActionError when miniwob does not allow the key."""
    if name in ALLOWED_KEYS:  # already miniwob syntax, e.g. "<Enter>" or "C-a"
        return name
    *mods, key = name.split("+") if len(name) > 1 else [name]
    try:
        prefix = "".join(_MODIFIERS[m.strip().lower()] for m in mods)
    except KeyError as e:
        raise ActionError(f"unknown modifier {e.args[0]!r} in key {name!r}") from None
    key = key.strip() or key  # " " is the space bar
    if len(key) == 1:
        key = key.lower() if prefix == "C-" else key
        if key == " ":
            key = "<Space>"
    else:
        key = _SPECIAL.get(key.lower(), key)
    if prefix + key not in ALLOWED_KEYS:
        raise ActionError(f"key {name!r} is not supported (Enter, Tab, Backspace, Delete, Space, arrows, "
                          "PageUp/PageDown, single characters, ctrl+a/c/x/v)")
    return prefix + key


def _args(body: str) -> list[tuple[str | None, str]]:
    """Split `body` into (name or None, value) arguments, string literals unquoted."""
    out, pos = [], 0
    while pos < len(body.rstrip()):
        m = _ARG.match(body, pos)
        if m is None or m.end() == pos:
            raise ActionError(f"cannot read the arguments {body!r}")
        name, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S)
        elif value[:1] in "\"'":
            raise ActionError(f"unterminated string in {body!r}")
        out.append((name.lower() if name else None, value))
        pos = m.end()
    return out


def parse_action(text: str) -> Action:
    """The action of the last `Action: ...` line of `text`; ActionError when there is none or it is malformed."""
    lines = _ACTION_LINE.findall(text or "")
    if not lines:
        raise ActionError("no line 'Action: <action>'")
    line = lines[-1].strip(" \t`*_").rstrip(".;").strip(" \t`*_")
    m = _CALL.fullmatch(line)
    if m is None:
        raise ActionError(f"{line!r} is not of the form name(arguments)")
    kind, args = m.group(1).lower(), _args(m.group(2))
    named = {n: v for n, v in args if n}
    positional = [v for n, v in args if not n]
    if len(named) + len(positional) != len(args):
        raise ActionError(f"repeated argument in {line!r}")

    def take(name: str) -> str:
        if name in named:
            return named.pop(name)
        if positional:
            return positional.pop(0)
        raise ActionError(f"{kind}() needs {name}")

    def ref(value: str) -> int:
        if not _INT.fullmatch(value.strip()):
            raise ActionError(f"ref must be an element number, not {value!r}")
        return int(value)

    if kind == "click":
        action = Action("click", ref=ref(take("ref")))
    elif kind == "type":
        if len(args) == 1:
            action = Action("type", text=take("text"))
        else:
            action = Action("type", ref=ref(take("ref")), text=take("text"))
    elif kind == "press":
        action = Action("press", key=parse_key(take("key")))
    elif kind == "click_xy":
        x, y = take("x"), take("y")
        if not (_NUM.fullmatch(x.strip()) and _NUM.fullmatch(y.strip())):
            raise ActionError(f"click_xy needs two numbers, not {x!r}, {y!r}")
        action = Action("click_xy", x=float(x), y=float(y))
    elif kind == "done":
        action = Action("done")
    else:
        raise ActionError(f"unknown action {kind!r} (click, type, press, click_xy, done)")
    if named or positional:
        raise ActionError(f"unexpected arguments in {line!r}")
    if action.text is not None and any(ord(c) > 0xFFFF for c in action.text):
        raise ActionError("the text has characters the browser cannot type (outside the BMP)")
    return action
