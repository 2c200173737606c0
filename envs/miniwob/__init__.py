"""MiniWoB++ web tasks in real headless Chromium: the agent sees a screenshot + the DOM as text, writes one action.

- `actions`: the action grammar (`Action: click(ref=12)`, ...): the parser and the one formatter of action text.
- `dom`: the DOM as text, one line per element (`[7] input_text value="" @(7,78 128x21)`).
- `teacher`: the scripted teacher of the default tasks (rationale + action from the utterance and the DOM).
- `env`: `MiniWoBEnv`, the episode environment over one browser: reward, failed steps, browser lifetime.
"""

from __future__ import annotations

from envs.miniwob.actions import (ACTION_PREFIX, ALLOWED_KEYS, Action, ActionError, action_line, format_action,
                                  key_name, parse_action, parse_key, quote)
from envs.miniwob.dom import Element, dom_elements, render_dom
from envs.miniwob.env import ANSWER_FORMAT, DEFAULT_TASKS, EPISODE_MAX_TIME_MS, TEST_SEED_OFFSET, MiniWoBEnv
from envs.miniwob.teacher import TEACHERS, teach

__all__ = ["ACTION_PREFIX", "ALLOWED_KEYS", "ANSWER_FORMAT", "Action", "ActionError", "DEFAULT_TASKS",
           "EPISODE_MAX_TIME_MS", "Element", "MiniWoBEnv", "TEACHERS", "TEST_SEED_OFFSET", "action_line",
           "dom_elements", "format_action", "key_name", "parse_action", "parse_key", "quote", "render_dom", "teach"]
