"""Training examples from trajectories: pure functions, no model, no I/O.

R3V's three self-training objectives are plain SFT examples (prompt -> target), built per episode
(task_id, seed) from the pool of sampled trajectories:
- `sft`:    every step of the most recent positive trajectory, with the CoT prompt.
- `refine`: the CoT prompt + the most recent wrong output + an instruction to judge and correct it ->
            the most recent correct output, at the decision step (below).
- `select`: k shuffled candidate outputs at the decision step ((k-1) positive + 1 negative when there are
            enough positives; 1 positive + (k-1) negative when there are enough negatives) -> the final
            answer/action line of a positive one.
The decision step of an episode is the first step where its most recent positive and most recent negative
trajectories saw the same observation but chose different answers/actions: step 0 for one-step QA. A
candidate's label is its trajectory's final outcome; candidates must share the decision step's observation.
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


def decision_step(good: Trajectory, bad: Trajectory) -> int | None:
    """The first step where both saw the same observation and chose differently (None if there is none)."""
    for i, (g, b) in enumerate(zip(good.steps, bad.steps)):
        if g.observation != b.observation:
            return None  # the environment itself diverged: no shared decision to learn from
        if g.parsed != b.parsed:
            return i
    return None


def _contrast(group: list[Trajectory]) -> tuple[Trajectory, Trajectory, int] | None:
    """(most recent positive, most recent negative, decision step) of an episode, when it has both."""
    pos = [t for t in group if t.label == "positive"]
    neg = [t for t in group if t.label == "negative"]
    if not (pos and neg):
        return None
    good, bad = max(pos, key=_recency), max(neg, key=_recency)
    step = decision_step(good, bad)
    return None if step is None else (good, bad, step)


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
    """At the decision step: most recent wrong output -> most recent correct one."""
    out = []
    for group in _by_episode(trajectories).values():
        contrast = _contrast(group)
        if contrast:
            good, bad, i = contrast
            obs = good.steps[i].observation
            out.append(Sample(refine_prompt(obs, bad.steps[i].output), good.steps[i].output, "refine", good.task_id))
    return out


def select_examples(trajectories: list[Trajectory], rng: random.Random, sizes: tuple[int, ...] = (3,),
                    per_episode: int = 2) -> list[Sample]:
    """Self-select examples at the decision step: shuffled candidates -> the final line of a correct one.

    For each candidate count k in `sizes`, up to two mixes: (k-1) positives + 1 negative, and 1 positive +
    (k-1) negatives, each when the episode has enough candidates of that label; at most `per_episode` in all.
    """
    out = []
    for group in _by_episode(trajectories).values():
        contrast = _contrast(group)
        if not contrast:
            continue
        good, _, i = contrast
        obs = good.steps[i].observation
        shared = [t for t in group if len(t.steps) > i and t.steps[i].observation == obs]
        pos = [t for t in shared if t.label == "positive"]
        neg = [t for t in shared if t.label == "negative"]
        made: dict[tuple[int, int], list[Trajectory]] = {}
        for k in sizes:
            for n_pos in (k - 1, 1):
                if (k, n_pos) not in made and len(pos) >= n_pos and len(neg) >= k - n_pos:
                    cands = rng.sample(pos, n_pos) + rng.sample(neg, k - n_pos)
                    rng.shuffle(cands)
                    made[(k, n_pos)] = cands
        for cands in rng.sample(list(made.values()), min(per_episode, len(made))):
            right = next(t for t in cands if t.label == "positive")
            target = final_line(obs, right.steps[i].parsed)
            out.append(Sample(select_prompt(obs, [t.steps[i].output for t in cands]), target, "select", right.task_id))
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
