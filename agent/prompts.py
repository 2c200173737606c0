"""Every prompt the agent writes, in one place: chain of thought, direct answer, self-refine, self-select.

The wording comes from the config (`conf/prompts/`: the default set, or a benchmark's own as R3V used it), so
the same `Prompts` drives sampling, training and evaluation: no train/inference mismatch. A prompt is a list
of chat messages in the Hugging Face multimodal format
(`{"role": "user", "content": [{"type": "image", "path": ...}, {"type": "text", "text": ...}]}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.episode import Observation

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Prompts:
    """A prompt set: the `prompts` block of the config (placeholders are described in conf/prompts/default.yaml)."""

    options_header: str
    cot: str
    cot_choice: str | None
    direct: str
    direct_choice: str | None
    refine: str
    candidate: str
    candidate_separator: str
    select: str

    def _template(self, name: str, obs: Observation) -> str:
        choice = getattr(self, f"{name}_choice") if obs.choices else None
        return choice or getattr(self, name)

    def task_text(self, obs: Observation) -> str:
        """The task as the model reads it: the question or instruction, its lettered options, its text context,
        the last action."""
        text = obs.text
        if obs.choices:
            options = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(obs.choices))
            text = f"{text}\n{self.options_header}\n{options}"
        text = f"{text}\n{obs.context}" if obs.context else text
        return f"{text}\nLast action: {obs.last_action}" if obs.last_action else text

    def _cot_text(self, obs: Observation) -> str:
        return self._template("cot", obs).format(task=self.task_text(obs), answer_format=obs.answer_format)

    def cot_prompt(self, obs: Observation) -> Messages:
        """The chain-of-thought prompt used for sampling, SFT on positives and test@1."""
        return _user(obs, self._cot_text(obs))

    def direct_prompt(self, obs: Observation) -> Messages:
        """The direct-answer prompt of the warm-up's QA data."""
        return _user(obs, self._template("direct", obs).format(task=self.task_text(obs), answer_format=obs.answer_format))

    def refine_prompt(self, obs: Observation, wrong: str) -> Messages:
        """Self-refine: the CoT prompt, the model's wrong solution, and the instruction to correct it."""
        return _user(obs, self.refine.format(cot_prompt=self._cot_text(obs), prediction=wrong,
                                             answer_format=obs.answer_format))

    def select_prompt(self, obs: Observation, candidates: list[str]) -> Messages:
        """Self-select: the CoT prompt, N candidate solutions, and the instruction to pick the right answer."""
        listed = self.candidate_separator.join(self.candidate.format(i=i + 1, prediction=c)
                                               for i, c in enumerate(candidates))
        return _user(obs, self.select.format(cot_prompt=self._cot_text(obs), predictions=listed,
                                             answer_format=obs.answer_format))


def _user(obs: Observation, text: str) -> Messages:
    parts: list[dict[str, Any]] = [{"type": "image", "path": p} for p in obs.images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def final_line(obs: Observation, answer: str) -> str:
    """The final line carrying just the answer, in the env's format: 'Answer: 3' for 'Answer: <...>'."""
    keyword = obs.answer_format.split(":", 1)[0]
    return f"{keyword}: {answer}"
