"""`MiniWoBEnv`: MiniWoB++ tasks in one real headless Chromium, as an episode environment (Gymnasium API).

Reward: miniwob's raw reward in [-1, 1], given when the task ends (> 0 is success); the in-browser wall-clock
limit is lifted to an hour because a model-driven agent is slow: the step budget bounds episodes instead.

An unparsable action, an unknown ref or out-of-page coordinates is a failed step: reward 0, `info["error"]` says
why, and the episode goes on until the step budget (`max_steps`) is spent, which truncates it.
"""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import gymnasium as gym
import miniwob  # noqa: F401  (registers the miniwob/* environments)
import numpy as np
from miniwob.action import ActionTypes
from miniwob.fields import get_field_extractor
from miniwob.reward import get_raw_reward
from PIL import Image
from urllib3.util.retry import Retry

from envs.browser import BrowserProcesses, guard
from envs.episode import EnvFailure, EpisodeEnv, Observation
from envs.files import atomic_write
from envs.miniwob.actions import ALLOWED_KEYS, Action, ActionError, parse_action
from envs.miniwob.dom import Element, dom_elements, render_dom
from envs.miniwob.teacher import teach

DEFAULT_TASKS = ("click-test", "click-button", "click-link", "focus-text", "enter-text", "click-checkboxes",
                 "login-user", "click-dialog", "click-tab", "enter-password")
TEST_SEED_OFFSET = 100_000  # test seeds never overlap train seeds
ANSWER_FORMAT = 'Action: <one of click(ref=N), type(ref=N, "text"), press("key"), click_xy(x, y)>'
EPISODE_MAX_TIME_MS = 3600 * 1000
LAUNCH_TIMEOUTS = 3  # a browser start (process + first page load) may take this many env.call_timeout


class MiniWoBEnv(EpisodeEnv):
    """MiniWoB++ tasks in one headless Chromium, started lazily on the first reset.

    A reset to another task navigates the same browser to the task's page (~0.1 s, vs ~1 s for a new
    browser). A crashed or hung browser is killed (every process, by pid) and replaced on the next reset; the
    episode it was running ends as failed with `info["error"] = "browser crashed: ..."`. `close()` ends the
    browser; a later `reset()` starts a new one.
    """

    multi_step = True

    def __init__(self, image_dir: str | Path, tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS,
                 split: str = "train", episodes_per_task: int = 20, max_steps: int = 6, refresh_freq: int = 50,
                 call_timeout: float = 20.0, max_dom_lines: int = 60, name: str = "miniwob"):
        """image_dir: where screenshots go (a run's `screens/`). The other defaults are conf/env/miniwob.yaml's."""
        unknown = [t for t in tasks if f"miniwob/{t}-v1" not in gym.registry]
        if unknown:
            raise ValueError(f"unknown MiniWoB++ tasks {unknown}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.name, self.tasks, self.split = name, list(tasks), split
        self.episodes_per_task, self.max_steps = episodes_per_task, max_steps
        self.image_dir = Path(image_dir)
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
        """Start a browser on `task`'s page. miniwob loads the page with no time limit of its own (chromedriver's
        is 300 s), so a watchdog bounds the start: after LAUNCH_TIMEOUTS x call_timeout the browser is killed,
        which fails the hung call at once, and the start raises TimeoutError."""
        procs = BrowserProcesses()
        made: dict[str, Any] = {}

        def make() -> None:
            try:
                with procs.launching():
                    made["env"] = gym.make(f"miniwob/{task}-v1", reward_processor=get_raw_reward,
                                           data_mode=self.split, disable_env_checker=True)
            except BaseException as e:  # handed to the caller's thread
                made["error"] = e

        try:
            worker = threading.Thread(target=make, name=f"miniwob-launch-{task}", daemon=True)
            worker.start()
            worker.join(LAUNCH_TIMEOUTS * self.call_timeout)
            if worker.is_alive():
                procs.kill()  # its processes carry our marker: found even before miniwob hands us the driver
                worker.join(self.call_timeout)
                raise TimeoutError(f"the {task} page did not load within {LAUNCH_TIMEOUTS * self.call_timeout:g} s "
                                   f"({LAUNCH_TIMEOUTS} x env.call_timeout)")
            if "error" in made:
                raise made["error"]
            self._gym = made["env"]
            driver = self._gym.unwrapped.instance.driver
            procs.track(driver.service.process.pid)
            driver.command_executor.client_config.timeout = self.call_timeout
            # urllib3 retries a timed-out GET (screenshots, element queries) 3 times: a hung page would cost 4 x
            # call_timeout per call. One try: the browser is restarted instead.
            conn = getattr(driver.command_executor, "_conn", None)
            if conn is not None and hasattr(conn, "connection_pool_kw"):
                conn.connection_pool_kw["retries"] = Retry(total=0, connect=0, read=False, redirect=0,
                                                           raise_on_redirect=False)
                conn.clear()
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
                # a reused page keeps the last episode's focus (a clicked button shows as focused in the next
                # one's DOM): drop it, so an episode's observations do not depend on what the browser did before
                self._gym.unwrapped.instance.driver.execute_script(
                    "if (document.activeElement) document.activeElement.blur();")
                raw, _ = self._gym.reset(seed=seed)
                break
            except FileNotFoundError:
                raise
            except Exception as e:
                self.kill_browser()
                if attempt:
                    first_line = (str(e).strip().splitlines() or [""])[0][:200]
                    raise EnvFailure(f"MiniWoB++ browser failed twice on reset: {type(e).__name__}: {first_line}") from e
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
        if not path.exists():  # another writer of the same screen writes the same bytes: either copy will do
            atomic_write(path, data)
        return str(path)

    def _check(self, a: Action) -> str | None:
        """Why the browser cannot run `a` on the current page, or None."""
        if a.ref is not None and a.ref not in self._els:
            return f"unknown ref {a.ref}: no such element on the current page"
        inst = self._gym.unwrapped.instance
        if a.kind == "click_xy" and not (0 <= a.x <= inst.task_width and 0 <= a.y <= inst.task_height):
            return f"{a} is outside the page (0..{inst.task_width}, 0..{inst.task_height})"
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

    def groups(self, task_id: str) -> dict[str, str]:
        return {"task": task_id}

    def parse(self, text: str) -> str | None:
        try:
            return str(parse_action(text))
        except ActionError:
            return None

    def teacher(self) -> str:
        """A scripted rationale + `Action:` line for the current page, from the utterance's fields and the DOM."""
        if self._obs is None:
            raise RuntimeError("call reset() before teacher()")
        return teach(self._task, self._fields, self._els)
