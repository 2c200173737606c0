"""MiniWoB++ web tasks in real headless Chromium: the agent sees a screenshot + the DOM as text, writes one action.

Action grammar. The model's output ends with a line `Action: <action>`; the LAST such line counts (the keyword
is case-insensitive, markdown bold/backticks around it are tolerated). Actions:

    click(ref=12)           click element 12 of the DOM listing (`click(12)` works too)
    type(ref=5, "hello")    set the text of element 5: focus it, select any text it holds, type (replacing it)
    type("hello")           type into the focused element
    press("Enter")          a key or combination: Enter, Tab, Backspace, Delete, Space, PageUp, PageDown,
                            ArrowUp/Down/Left/Right (or Up/...), a single character, ctrl+a/c/x/v
    click_xy(80, 120)       click at page coordinates (x, y), the same pixels as the screenshot
    done()                  give up: the episode ends, unsolved

Strings take 'single' or "double" quotes; a backslash escapes the next character (`"say \\"hi\\""`). An
unparsable action, an unknown ref or out-of-page coordinates is a failed step: reward 0, `info["error"]` says
why, and the episode goes on until the step budget (`max_steps`) is spent, which truncates it.

Reward: miniwob's raw reward in [-1, 1], given when the task ends (> 0 is success); the in-browser wall-clock
limit is lifted to an hour because a model-driven agent is slow: the step budget bounds episodes instead.

DOM listing: one line per element that has text or is a form control, e.g.
`[7] input_text value="" @(7,78 128x21)` (ref, tag, text, value or checked state, left,top widthxheight).
Text pseudo-elements (negative refs, renumbered every step) are merged into their parent's text; pure
wrappers and empty decorations are left out.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import miniwob  # noqa: F401  (registers the miniwob/* environments)
import numpy as np
from miniwob.action import ActionTypes
from miniwob.constants import DEFAULT_ALLOWED_KEYS, WEBDRIVER_SPECIAL_KEYS
from miniwob.fields import get_field_extractor
from miniwob.reward import get_raw_reward
from PIL import Image

from envs.browser import BrowserProcesses, guard
from envs.episode import EpisodeEnv, Observation

DEFAULT_TASKS = ("click-test", "click-button", "click-link", "focus-text", "enter-text", "click-checkboxes",
                 "login-user", "click-dialog", "click-tab", "enter-password")
TEST_SEED_OFFSET = 100_000  # test seeds never overlap train seeds
ANSWER_FORMAT = 'Action: <one of click(ref=N), type(ref=N, "text"), press("key"), click_xy(x, y)>'
EPISODE_MAX_TIME_MS = 3600 * 1000


# ---------------------------------------------------------------------------------------------- actions

class ActionError(ValueError):
    """The model's text holds no valid action."""


@dataclass(frozen=True)
class Action:
    kind: str  # click | type | press | click_xy | done
    ref: int | None = None
    text: str | None = None
    key: str | None = None  # miniwob key syntax, e.g. "<Enter>", "C-a"
    x: float | None = None
    y: float | None = None

    def __str__(self) -> str:
        if self.kind == "click":
            return f"click(ref={self.ref})"
        if self.kind == "type":
            return f"type(ref={self.ref}, {quote(self.text)})" if self.ref is not None else f"type({quote(self.text)})"
        if self.kind == "press":
            return f"press({quote(key_name(self.key))})"
        if self.kind == "click_xy":
            return f"click_xy({self.x:g}, {self.y:g})"
        return "done()"


def quote(s: str) -> str:
    """A double-quoted string literal of the action grammar (and of the DOM listing)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ACTION_LINE = re.compile(r"^[\s>*#`_-]*action[*_`\s]*:(.*)$", re.I | re.M)
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


# ---------------------------------------------------------------------------------------------- DOM

@dataclass
class Element:
    ref: int
    parent: int
    tag: str  # lower case; inputs carry their type, e.g. "input_text"
    text: str  # own text, or its text pseudo-elements' text joined
    value: str  # inputs: the text; checkboxes/radios: "True" or ""
    classes: str
    left: int
    top: int
    width: int
    height: int
    focused: bool


_CONTROLS = ("input", "button", "a", "select", "textarea", "option")


def dom_elements(raw: tuple[dict[str, Any], ...]) -> dict[int, Element]:
    """ref -> Element for miniwob's `dom_elements`, text pseudo-elements merged into their parents."""
    els: dict[int, Element] = {}
    for d in raw:
        text = " ".join(str(d["text"]).split())
        if d["ref"] < 0:
            if d["parent"] in els and text:
                p = els[d["parent"]]
                p.text = f"{p.text} {text}".strip()
            continue
        els[d["ref"]] = Element(d["ref"], d["parent"], d["tag"], text, str(d["value"]), d["classes"],
                                round(float(d["left"][0])), round(float(d["top"][0])), round(float(d["width"][0])),
                                round(float(d["height"][0])), bool(d["flags"][0]))
    return els


def render_dom(els: dict[int, Element], max_lines: int = 60, max_text: int = 50) -> str:
    """The compact DOM listing shown to the model (see the module docstring)."""
    lines = []
    for e in els.values():
        control = e.tag.split("_")[0] in _CONTROLS
        if not (e.text or control):
            continue
        parts = [f"[{e.ref}] {e.tag}"]
        if e.text:
            parts.append(quote(e.text if len(e.text) <= max_text else e.text[:max_text - 3] + "..."))
        if e.tag in ("input_checkbox", "input_radio"):
            parts.append("checked" if e.value == "True" else "unchecked")
        elif e.tag.startswith("input") or e.tag == "textarea":
            parts.append(f"value={quote(e.value[:max_text])}")
        if e.focused:
            parts.append("focused")
        parts.append(f"@({e.left},{e.top} {e.width}x{e.height})")
        lines.append(" ".join(parts))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more elements)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- teacher

Plan = tuple[str, str]  # (rationale, action)


def _find(els: dict[int, Element], what: str, pred: Callable[[Element], bool]) -> Element:
    for e in els.values():
        if pred(e):
            return e
    raise LookupError(f"I cannot find {what} on the page")


def _click(intro: str, e: Element) -> Plan:
    return f"{intro} It is element {e.ref}.", f"click(ref={e.ref})"


def _fill(todo: list[tuple[Element, str, str]], submit: Element) -> Plan:
    """Type each wanted value whose field does not hold it yet, one per step; then submit."""
    for el, want, name in todo:
        if el.value != want:
            state = "is empty" if not el.value else f"holds {quote(el.value)}"
            return (f"The {name} (element {el.ref}) must contain {quote(want)} and {state}.",
                    f"type(ref={el.ref}, {quote(want)})")
    return (f"All fields are filled in, so click the {quote(submit.text)} button (element {submit.ref}).",
            f"click(ref={submit.ref})")


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
            return f"Checkbox {quote(label)} (element {box.ref}) must be {state} and is not.", f"click(ref={box.ref})"
    submit = _button(els, "Submit")
    return (f"Exactly the requested checkboxes are checked, so click \"Submit\" (element {submit.ref}).",
            f"click(ref={submit.ref})")


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


# ---------------------------------------------------------------------------------------------- environment

class MiniWoBEnv(EpisodeEnv):
    """MiniWoB++ tasks in one headless Chromium, started lazily on the first reset.

    A reset to another task navigates the same browser to the task's page (~0.1 s, vs ~1 s for a new
    browser). A crashed or hung browser is killed (every process, by pid) and replaced on the next reset; the
    episode it was running ends as failed with `info["error"] = "browser crashed: ..."`. `close()` ends the
    browser; a later `reset()` starts a new one.
    """

    metrics_by_task = True

    def __init__(self, tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS, split: str = "train",
                 episodes_per_task: int = 20, max_steps: int = 6, image_dir: str | Path | None = None,
                 refresh_freq: int = 50, call_timeout: float = 20.0, max_dom_lines: int = 60,
                 name: str = "miniwob"):
        unknown = [t for t in tasks if f"miniwob/{t}-v1" not in gym.registry]
        if unknown:
            raise ValueError(f"unknown MiniWoB++ tasks {unknown}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.name, self.tasks, self.split = name, list(tasks), split
        self.episodes_per_task, self.max_steps = episodes_per_task, max_steps
        self.image_dir = Path(image_dir) if image_dir else Path(tempfile.gettempdir()) / "miniwob_screens"
        self.refresh_freq = refresh_freq  # reload the page every N episodes: holds Chromium's memory creep
        self.call_timeout = call_timeout  # seconds before a browser call counts as hung
        self.max_dom_lines = max_dom_lines
        self._gym: gym.Env | None = None
        self._procs: BrowserProcesses | None = None
        self._finalizer = None
        self._page = ""  # task whose page is loaded
        self._page_episodes = 0
        self._task, self._seed, self._steps = "", 0, 0
        self._obs: Observation | None = None  # None: no episode in progress
        self._fields: dict[str, str] = {}
        self._els: dict[int, Element] = {}

    # --- browser lifetime

    def _launch(self, task: str) -> None:
        procs = BrowserProcesses()
        try:
            with procs.launching():
                self._gym = gym.make(f"miniwob/{task}-v1", reward_processor=get_raw_reward, data_mode=self.split,
                                     disable_env_checker=True)
            driver = self._gym.unwrapped.instance.driver
            procs.track(driver.service.process.pid)
            driver.command_executor.client_config.timeout = self.call_timeout
        except BaseException:
            self._gym = None
            procs.kill()
            raise
        self._procs, self._finalizer = procs, guard(self, procs)
        self._page, self._page_episodes = task, 0
        self._lift_time_limit()

    def _lift_time_limit(self) -> None:
        self._gym.unwrapped.instance.driver.execute_script(f"core.EPISODE_MAX_TIME = {EPISODE_MAX_TIME_MS};")

    def _load(self, task: str) -> None:
        """Make the browser show `task`'s page: reuse it (navigate/refresh) when possible, else start one."""
        flight = task.startswith("flight.") or self._page.startswith("flight.")
        if self._gym is None or (flight and task != self._page):  # flight pages need their own HTTP server
            self.kill_browser()
            self._launch(task)
        elif task != self._page or (self.refresh_freq and self._page_episodes >= self.refresh_freq):
            inst = self._gym.unwrapped.instance
            if not flight:
                inst.url = urllib.parse.urljoin(inst.url, f"{task}.html")
            inst.field_extractor = get_field_extractor(task)
            inst.driver.get(inst.url)
            self._procs.track()
            self._page, self._page_episodes = task, 0
            self._lift_time_limit()  # a page load resets it

    def kill_browser(self) -> None:
        """End the browser now, every process of it; the next reset starts a new one."""
        if self._finalizer is not None:
            self._finalizer()  # runs BrowserProcesses.kill once
        self._gym = self._procs = self._finalizer = None
        self._page = ""

    def close(self) -> None:
        """Quit the browser politely, then make sure every one of its processes is gone."""
        if self._gym is not None:
            try:
                self._gym.close()
            except Exception:
                pass  # dead or hung: kill_browser ends it anyway
        self.kill_browser()
        self._obs = None

    @property
    def browser_pids(self) -> set[int]:
        """Pids of the live processes of this env's browser (empty when none runs)."""
        return self._procs.pids() if self._procs else set()

    # --- episodes

    def episodes(self) -> list[tuple[str, int]]:
        offset = 0 if self.split == "train" else TEST_SEED_OFFSET
        return [(t, offset + i) for t in self.tasks for i in range(self.episodes_per_task)]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task = (options or {}).get("task_id")
        if f"miniwob/{task}-v1" not in gym.registry:
            raise KeyError(f"unknown task_id {task!r} for env {self.name!r}")
        seed = int(seed) if seed is not None else int(self.np_random.integers(2**31))
        for attempt in range(2):  # a browser that died between episodes is replaced once
            try:
                self._load(task)
                raw, _ = self._gym.reset(seed=seed)
                break
            except FileNotFoundError:
                raise
            except Exception as e:
                self.kill_browser()
                if attempt:
                    raise RuntimeError(f"MiniWoB++ browser failed twice on reset: {type(e).__name__}: {e}") from e
        self._page_episodes += 1
        self._task, self._seed, self._steps = task, seed, 0
        self._fields = dict(raw["fields"])
        self._observe(raw)
        return self._obs, {}

    def _observe(self, raw: dict[str, Any], last_action: str | None = None) -> None:
        self._els = dom_elements(raw["dom_elements"])
        self._obs = Observation(text=raw["utterance"], images=[self._save_screenshot(raw["screenshot"])],
                                context=render_dom(self._els, self.max_dom_lines), answer_format=ANSWER_FORMAT,
                                task_id=self._task, seed=self._seed, last_action=last_action)

    def _save_screenshot(self, pixels: np.ndarray) -> str:
        """Save as PNG named by content: identical screens (the N samples of one episode) share one file."""
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        data = buf.getvalue()
        path = self.image_dir / f"{self._task}-{hashlib.sha1(data).hexdigest()[:16]}.png"
        if not path.exists():
            self.image_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{id(self)}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return str(path)

    def _check(self, a: Action) -> str | None:
        """Why the browser cannot run `a` on the current page, or None."""
        if a.ref is not None and a.ref not in self._els:
            return f"unknown ref {a.ref}: no such element on the current page"
        inst = self._gym.unwrapped.instance
        if a.kind == "click_xy" and not (0 <= a.x <= inst.task_width and 0 <= a.y <= inst.task_height):
            return f"click_xy({a.x:g}, {a.y:g}) is outside the page (0..{inst.task_width}, 0..{inst.task_height})"
        return None

    def _execute(self, a: Action):
        env = self._gym.unwrapped
        make = env.create_action
        if a.kind == "click":
            act = make(ActionTypes.CLICK_ELEMENT, ref=a.ref)
        elif a.kind == "click_xy":
            act = make(ActionTypes.CLICK_COORDS, coords=np.array([a.x, a.y], dtype=np.float32))
        elif a.kind == "press":
            act = make(ActionTypes.PRESS_KEY, key=ALLOWED_KEYS.index(a.key))
        elif a.ref is None:
            act = make(ActionTypes.TYPE_TEXT, text=a.text)
        elif self._els[a.ref].value not in ("", "True"):  # it holds text ("True": a checked box): select it all first
            for pre in (make(ActionTypes.CLICK_ELEMENT, ref=a.ref), make(ActionTypes.PRESS_KEY,
                                                                         key=ALLOWED_KEYS.index("C-a"))):
                env.instance.perform(pre, env.action_space_config)
            act = make(ActionTypes.TYPE_TEXT, text=a.text)
        else:
            act = make(ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ref=a.ref, text=a.text)
        return self._gym.step(act)

    def step(self, action: str):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        self._steps += 1
        info: dict[str, Any] = {"parsed": None, "raw_reward": 0.0}
        try:
            a = parse_action(action)
        except ActionError as e:
            info["error"] = f"invalid action: {e}"
            return self._next(info)
        info["parsed"] = str(a)
        if a.kind == "done":
            self._obs = None
            info["reason"] = "the agent gave up (done())"
            return None, 0.0, True, False, info
        error = self._check(a)
        if error:
            info["error"] = error
            return self._next(info)
        try:
            raw, reward, terminated, _, minfo = self._execute(a)
        except Exception as e:  # dead or hung browser (WebDriverException, HTTP timeout, ...)
            self.kill_browser()
            self._obs = None
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            info["error"] = f"browser crashed: {type(e).__name__}: {first_line}"
            return None, 0.0, True, False, info
        info["raw_reward"] = float(minfo["raw_reward"])
        if minfo.get("reason") is not None:
            info["reason"] = str(minfo["reason"])
        if terminated:
            self._obs = None
            return None, float(reward), True, False, info
        self._observe(raw, last_action=info["parsed"])
        return self._next(info)

    def _next(self, info: dict[str, Any]):
        """The episode goes on, unless this step spent the budget: then it is truncated."""
        obs, truncated = self._obs, self._steps >= self.max_steps
        if truncated:
            self._obs = None
        return obs, 0.0, False, truncated, info

    def parse(self, text: str) -> str | None:
        try:
            return str(parse_action(text))
        except ActionError:
            return None

    def teacher(self) -> str:
        """A scripted rationale + `Action:` line for the current page, from the utterance's fields and the DOM."""
        if self._obs is None:
            raise RuntimeError("call reset() before teacher()")
        if self._task not in TEACHERS:
            raise NotImplementedError(f"no scripted teacher for MiniWoB++ task {self._task!r}")
        try:
            rationale, action = TEACHERS[self._task](self._fields, self._els)
        except KeyError as e:  # the utterance lacks a field the script needs
            rationale, action = f"The task does not name the {e.args[0]}.", "done()"
        except LookupError as e:  # the page lacks an element the script needs
            rationale, action = f"{e.args[0]}.", "done()"
        return f"{rationale}\nAction: {action}"
