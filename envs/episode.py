"""Records and the episode interface shared by every environment.

Every environment is a `gymnasium.Env` whose action is the model's text:

    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    obs, reward, terminated, truncated, info = env.step(text)

`obs` is an `Observation`; `info` carries the parsed answer/action (`parsed`) and, for QA, the gold answer
(`gold`). `env.episodes()` lists the (task_id, seed) pairs of the env's split, `env.parse(text)` reads the
answer/action out of a text without acting (for voting), and `env.teacher()` writes the scripted teacher's
output (rationale + final line) for the current observation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass
class Observation:
    """What the agent sees at one step."""

    text: str  # the task: a question or an instruction
    images: list[str] = field(default_factory=list)  # image file paths
    context: str | None = None  # the same facts as text (table, objects, DOM), when enabled
    answer_format: str = "Answer: <answer>"  # the final line the model must write
    task_id: str = ""
    seed: int = 0
    last_action: str | None = None  # multi-step envs: the action that led here (None at an episode's start)
    choices: list[str] | None = None  # a multiple-choice question's options, in letter order (A, B, ...)

    def page(self) -> "Observation":
        """This observation without the action that led to it: the state of the page alone."""
        return dataclasses.replace(self, last_action=None)


@dataclass
class Step:
    """One agent step: what it saw, what it wrote, what the environment made of it."""

    observation: Observation
    output: str
    parsed: str | None  # the extracted answer/action; None when unparsable
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


SCHEMA_VERSION = 1  # of a Trajectory's JSON record; raise it when a change breaks readers of older records


@dataclass
class Trajectory:
    """One episode of one policy sample. `label` is derived from the final reward."""

    episode_id: str
    env: str
    task_id: str
    seed: int
    steps: list[Step]
    reward: float
    iteration: int = 0
    model: str = ""
    sample: int = 0  # index among the N samples of the same episode
    gold: str | None = None
    error: str | None = None  # why the episode could not be played (its environment failed to start), if so

    @property
    def label(self) -> str:
        return "positive" if self.reward > 0 else "negative"

    @property
    def answer(self) -> str | None:
        """The last parsed answer/action (None when the last output was unparsable)."""
        return self.steps[-1].parsed if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label"] = self.label
        d["schema"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        version = d.get("schema", 1)  # records written before the field existed are version 1
        if version != SCHEMA_VERSION:
            raise ValueError(f"trajectory record of schema version {version!r}: this version of r3v reads version "
                             f"{SCHEMA_VERSION} only (episode {d.get('episode_id')!r})")
        d = {k: v for k, v in d.items() if k not in ("label", "schema")}
        d["steps"] = [
            Step(**{**s, "observation": Observation(**s["observation"])}) for s in d["steps"]
        ]
        return cls(**d)


class EnvFailure(RuntimeError):
    """The environment could not start an episode even after restarting itself (e.g. a browser that fails to
    launch twice). Rollouts record the episode as failed, with this message as its cause, and go on."""


class NoTeacher(LookupError):
    """The environment has no teacher output for this episode (e.g. a benchmark item without a rationale)."""


class EpisodeEnv(gym.Env):
    """Base class: a text-action environment over a list of (task_id, seed) episodes."""

    name: str = ""
    multi_step: bool = False  # True: an episode may take several steps (web tasks); False: one step (QA)
    metadata = {"render_modes": []}
    action_space = gym.spaces.Text(max_length=100_000)

    def episodes(self) -> list[tuple[str, int]]:
        """The (task_id, seed) pairs of this environment's split, in a fixed order."""
        raise NotImplementedError

    def parse(self, text: str) -> str | None:
        """The canonical answer/action in `text` for the current observation, or None; no side effects."""
        raise NotImplementedError

    def teacher(self) -> str:
        """The teacher's output for the current observation: a short rationale + final line (`NoTeacher` when
        this episode has none)."""
        raise NotImplementedError

    def groups(self, task_id: str) -> dict[str, str]:
        """The groups an episode belongs to, as {key: value} (e.g. {"task": "click-test"}): evaluation and
        sampling also report their metrics per group, in rows that carry the key."""
        return {}
