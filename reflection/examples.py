"""Training examples from trajectories: pure functions, no model, no I/O.

R3V's three self-training objectives are plain SFT examples (prompt -> target):
- `sft`:    per episode with >= 1 positive, the most recent positive trajectory (every step of it).
- `refine`: per episode with a positive and a negative: the CoT prompt + the most recent wrong solution +
            an instruction to judge and correct it -> the most recent correct solution.
- `select`: per episode with a positive and a negative: k shuffled candidates ((k-1) pos + 1 neg when there
            are enough positives; 1 pos + (k-1) neg when there are enough negatives) -> the final answer only.
Warm-up data: `teacher` (the scripted teacher's CoT) and `qa` (direct answers to every training question).
"Most recent" = the newest iteration, then the highest sample index.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from agent.prompts import Messages, cot_prompt, direct_prompt, final_line, refine_prompt, select_prompt
from envs.episode import Trajectory

KINDS = ("qa", "teacher", "sft", "refine", "select")


@dataclass
class Sample:
    """One supervised example: the loss is on `target` only."""

    messages: Messages
    target: str
    kind: str  # one of KINDS
    task_id: str = ""


def _by_episode(trajectories: list[Trajectory]) -> dict[tuple[str, int], list[Trajectory]]:
    groups: dict[tuple[str, int], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[(t.task_id, t.seed)].append(t)
    return groups


def _recency(t: Trajectory) -> tuple[int, int]:
    return (t.iteration, t.sample)


def sft_examples(trajectories: list[Trajectory]) -> list[Sample]:
    """Every step of the most recent positive trajectory of each episode, with the CoT prompt."""
    out = []
    for group in _by_episode(trajectories).values():
        positives = [t for t in group if t.label == "positive"]
        if positives:
            best = max(positives, key=_recency)
            out += [Sample(cot_prompt(s.observation), s.output, "sft", best.task_id) for s in best.steps]
    return out


def refine_examples(trajectories: list[Trajectory]) -> list[Sample]:
    """Most recent wrong solution -> most recent correct one, for episodes with both."""
    out = []
    for group in _by_episode(trajectories).values():
        pos = [t for t in group if t.label == "positive"]
        neg = [t for t in group if t.label == "negative"]
        if pos and neg:
            good, bad = max(pos, key=_recency), max(neg, key=_recency)
            obs = good.steps[0].observation
            out.append(Sample(refine_prompt(obs, bad.steps[0].output), good.steps[0].output, "refine", good.task_id))
    return out


def select_examples(trajectories: list[Trajectory], rng: random.Random, sizes: tuple[int, ...] = (3,),
                    per_episode: int = 2) -> list[Sample]:
    """Self-select examples: shuffled candidate solutions -> the final answer of a correct one.

    For each candidate count k in `sizes`, up to two mixes: (k-1) positives + 1 negative, and 1 positive +
    (k-1) negatives, each when the episode has enough samples of that label; at most `per_episode` in all.
    """
    out = []
    for group in _by_episode(trajectories).values():
        pos = [t for t in group if t.label == "positive"]
        neg = [t for t in group if t.label == "negative"]
        if not (pos and neg):
            continue
        made = []
        for k in sizes:
            for n_pos in (k - 1, 1):
                if len(pos) >= n_pos and len(neg) >= k - n_pos and (k, n_pos) not in [m[:2] for m in made]:
                    cands = rng.sample(pos, n_pos) + rng.sample(neg, k - n_pos)
                    rng.shuffle(cands)
                    made.append((k, n_pos, cands))
        for _, _, cands in rng.sample(made, min(per_episode, len(made))):
            right = next(t for t in cands if t.label == "positive")
            obs = right.steps[0].observation
            target = final_line(obs, right.answer)
            out.append(Sample(select_prompt(obs, [t.steps[0].output for t in cands]), target, "select", right.task_id))
    return out


def teacher_examples(trajectories: list[Trajectory]) -> list[Sample]:
    """The scripted teacher's chain of thought, every step, with the CoT prompt."""
    return [Sample(cot_prompt(s.observation), s.output, "teacher", t.task_id) for t in trajectories for s in t.steps]


def qa_examples(trajectories: list[Trajectory]) -> list[Sample]:
    """Direct-answer examples: the question -> `Answer: <gold>` (episodes with a gold answer only)."""
    return [Sample(direct_prompt(t.steps[0].observation), final_line(t.steps[0].observation, t.gold), "qa", t.task_id)
            for t in trajectories if t.gold is not None]


def pool_examples(pool: list[Trajectory], rng: random.Random, refine: bool = True, select: bool = True,
                  select_sizes: tuple[int, ...] = (3,), select_per_episode: int = 2) -> dict[str, list[Sample]]:
    """The self-generated objectives built from the pool, by kind."""
    return {
        "sft": sft_examples(pool),
        "refine": refine_examples(pool) if refine else [],
        "select": select_examples(pool, rng, select_sizes, select_per_episode) if select else [],
    }
