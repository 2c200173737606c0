"""Every prompt the agent writes, in one place: chain of thought, direct answer, self-refine, self-select.

A prompt is a list of chat messages in the Hugging Face multimodal format
(`{"role": "user", "content": [{"type": "image", "path": ...}, {"type": "text", "text": ...}]}`), so the same
prompt drives sampling, training and evaluation: no train/inference mismatch.
"""

from __future__ import annotations

from typing import Any

from envs.episode import Observation

Messages = list[dict[str, Any]]

COT_INSTRUCTION = "First generate a step-by-step solution, then give the final answer as: {answer_format}"
DIRECT_INSTRUCTION = "Answer directly, with no explanation, as: {answer_format}"
REFINE_INSTRUCTION = (
    "Judge whether the prediction above is correct. If it is wrong, find the mistake and write a corrected "
    "step-by-step solution, then give the final answer as: {answer_format}"
)
SELECT_INSTRUCTION = "Which prediction is correct? Give the final answer as: {answer_format}"


def _task_text(obs: Observation) -> str:
    text = f"{obs.text}\n{obs.context}" if obs.context else obs.text
    return f"{text}\nLast action: {obs.last_action}" if obs.last_action else text


def _user(obs: Observation, text: str) -> Messages:
    parts: list[dict[str, Any]] = [{"type": "image", "path": p} for p in obs.images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def cot_prompt(obs: Observation) -> Messages:
    """The chain-of-thought prompt used for sampling, SFT on positives and test@1."""
    return _user(obs, f"{_task_text(obs)}\n{COT_INSTRUCTION.format(answer_format=obs.answer_format)}")


def direct_prompt(obs: Observation) -> Messages:
    """The direct-answer prompt of the warm-up's QA data."""
    return _user(obs, f"{_task_text(obs)}\n{DIRECT_INSTRUCTION.format(answer_format=obs.answer_format)}")


def refine_prompt(obs: Observation, wrong: str) -> Messages:
    """Self-refine: the CoT prompt, the model's wrong solution, and the instruction to correct it."""
    text = (
        f"{_task_text(obs)}\n{COT_INSTRUCTION.format(answer_format=obs.answer_format)}\n\n"
        f"Model's prediction:\n{wrong}\n\n{REFINE_INSTRUCTION.format(answer_format=obs.answer_format)}"
    )
    return _user(obs, text)


def select_prompt(obs: Observation, candidates: list[str]) -> Messages:
    """Self-select: the CoT prompt, N candidate solutions, and the instruction to pick the right answer."""
    listed = "\n\n".join(f"Model's prediction {i + 1}:\n{c}" for i, c in enumerate(candidates))
    text = (
        f"{_task_text(obs)}\n{COT_INSTRUCTION.format(answer_format=obs.answer_format)}\n\n"
        f"{listed}\n\n{SELECT_INSTRUCTION.format(answer_format=obs.answer_format)}"
    )
    return _user(obs, text)


def final_line(obs: Observation, answer: str) -> str:
    """The final line carrying just the answer, in the env's format: 'Answer: 3' for 'Answer: <...>'."""
    keyword = obs.answer_format.split(":", 1)[0]
    return f"{keyword}: {answer}"
