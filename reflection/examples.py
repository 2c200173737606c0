"""Training examples from trajectories: pure functions, no model, no I/O.

R3V's three self-training objectives are plain SFT examples (prompt -> target), built per episode
(task_id, seed) from the pool of sampled trajectories:
- `sft`:    every step that acted in the most recent positive trajectory, with the CoT prompt.
- `refine`: the CoT prompt + the most recent wrong output + an instruction to judge and correct it ->
            the most recent correct output, at the decision step (below).
- `select`: k shuffled candidate outputs at the decision step ((k-1) positive + 1 negative when there are
            enough positives; 1 positive + (k-1) negative when there are enough negatives) -> the final
            answer/action line of a positive one.
A step *acted* when its action was valid and changed the page (or ended the episode). A positive
web trajectory often holds steps that did nothing (an unparsable action, a click on plain text) before the
ones that solved the task; those are not taught. The decision step of an episode is where its most recent
positive and most recent negative trajectories first saw the same page and chose differently, the positive's
idle steps skipped (a page is an observation less the last action that led to it, which idle steps change):
step 0 for one-step QA. On that page a positive candidate is a step that acted in a positive trajectory, a
negative one a step of a negative trajectory that chose an action no positive chose there.
Warm-up data: `teacher` (the scripted teacher's CoT) and `qa` (direct answers to every training question).
"Most recent" = the newest iteration, then the highest sample index.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from agent.prompts import Messages, Prompts, final_line
from envs.episode import Observation, Step, Trajectory

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


def acted(traj: Trajectory, i: int) -> bool:
    """Whether step i did something: a valid action that changed the page (not just the
    last action the observation names) or ended the episode."""
    step = traj.steps[i]
    if step.parsed is None or step.info.get("error"):
        return False
    return i + 1 == len(traj.steps) or traj.steps[i + 1].observation.page() != step.observation.page()


def decision_step(good: Trajectory, bad: Trajectory) -> tuple[int, int] | None:
    """(step of good, step of bad) at the first page where both chose differently; None when the environment
    itself diverged or they never differ (see `compare`)."""
    return compare(good, bad)[1]


def compare(good: Trajectory, bad: Trajectory) -> tuple[str, tuple[int, int] | None]:
    """Walk a positive and a negative trajectory of one episode side by side: ("decision", (i, j)) where both
    first saw the same page (`Observation.page()`: what led to it, the last action, may differ) and chose
    differently; ("diverged", None) when they saw different pages before that; ("same", None) when they never
    chose differently. The positive's steps that did nothing are skipped; the negative's are choices it made
    on that page, so a no-op there is its mistake, however its earlier no-ops changed the last action."""
    j = 0
    for i, g in enumerate(good.steps):
        if not acted(good, i):
            continue
        if j >= len(bad.steps) or bad.steps[j].observation.page() != g.observation.page():
            return "diverged", None
        if bad.steps[j].parsed != g.parsed:
            return "decision", (i, j)
        j += 1
    return "same", None


def contrast_counts(trajectories: list[Trajectory]) -> dict[str, int]:
    """Per episode with a positive and a negative, what its most recent pair gave: a decision step to learn
    from (`decision_pairs`), or none because the environment diverged (`pairs_env_diverged`) or they never
    chose differently (`pairs_same_choices`)."""
    counts = {"decision_pairs": 0, "pairs_env_diverged": 0, "pairs_same_choices": 0}
    names = {"decision": "decision_pairs", "diverged": "pairs_env_diverged", "same": "pairs_same_choices"}
    for group in _by_episode(trajectories).values():
        pos = [t for t in group if t.label == "positive"]
        neg = [t for t in group if t.label == "negative"]
        if pos and neg:
            counts[names[compare(max(pos, key=_recency), max(neg, key=_recency))[0]]] += 1
    return counts


def _contrast(group: list[Trajectory]) -> tuple[Step, Step] | None:
    """(most recent positive's step, most recent negative's step) at the episode's decision step."""
    pos = [t for t in group if t.label == "positive"]
    neg = [t for t in group if t.label == "negative"]
    if not (pos and neg):
        return None
    good, bad = max(pos, key=_recency), max(neg, key=_recency)
    point = decision_step(good, bad)
    return None if point is None else (good.steps[point[0]], bad.steps[point[1]])


def candidates_at(group: list[Trajectory], obs: Observation) -> tuple[list[Step], list[Step]]:
    """Positive and negative candidate steps on the page of `obs`, one per trajectory at most (see the module
    docstring)."""
    page = obs.page()
    pos = [next((s for i, s in enumerate(t.steps) if s.observation.page() == page and acted(t, i)), None)
           for t in group if t.label == "positive"]
    pos = [s for s in pos if s is not None]
    right = {s.parsed for s in pos}
    neg = [next((s for s in t.steps if s.observation.page() == page and s.parsed not in right), None)
           for t in group if t.label == "negative"]
    neg = [s for s in neg if s is not None]
    return pos, neg


def sft_examples(trajectories: list[Trajectory], prompts: Prompts) -> list[Sample]:
    """Every step that acted in the most recent positive trajectory of each episode, with the CoT prompt."""
    out = []
    for group in _by_episode(trajectories).values():
        positives = [t for t in group if t.label == "positive"]
        if positives:
            best = max(positives, key=_recency)
            out += [Sample(prompts.cot_prompt(s.observation), s.output, "sft", best.task_id)
                    for i, s in enumerate(best.steps) if acted(best, i)]
    return out


def refine_examples(trajectories: list[Trajectory], prompts: Prompts) -> list[Sample]:
    """At the decision step: most recent wrong output -> most recent correct one."""
    out = []
    for group in _by_episode(trajectories).values():
        contrast = _contrast(group)
        if contrast:
            good, bad = contrast
            out.append(Sample(prompts.refine_prompt(good.observation, bad.output), good.output, "refine",
                              group[0].task_id))
    return out


def select_examples(trajectories: list[Trajectory], prompts: Prompts, rng: random.Random,
                    sizes: tuple[int, ...], per_episode: int) -> list[Sample]:
    """Self-select examples at the decision step: shuffled candidates -> the final line of a correct one.

    For each candidate count k in `sizes`, up to two mixes: (k-1) positives + 1 negative, and 1 positive +
    (k-1) negatives, each when the episode has enough candidates of that label; at most `per_episode` in all.
    """
    out = []
    for group in _by_episode(trajectories).values():
        contrast = _contrast(group)
        if not contrast:
            continue
        obs = contrast[0].observation
        pos, neg = candidates_at(group, obs)
        made: dict[tuple[int, int], list[tuple[bool, Step]]] = {}
        for k in sizes:
            for n_pos in (k - 1, 1):
                if (k, n_pos) not in made and len(pos) >= n_pos and len(neg) >= k - n_pos:
                    cands = [(True, s) for s in rng.sample(pos, n_pos)] + [(False, s) for s in rng.sample(neg, k - n_pos)]
                    rng.shuffle(cands)
                    made[(k, n_pos)] = cands
        for cands in rng.sample(list(made.values()), min(per_episode, len(made))):
            right = next(s for ok, s in cands if ok)
            out.append(Sample(prompts.select_prompt(obs, [s.output for _, s in cands]), final_line(obs, right.parsed), "select",
                              group[0].task_id))
    return out


def teacher_examples(trajectories: list[Trajectory], prompts: Prompts) -> list[Sample]:
    """The scripted teacher's chain of thought, every step, with the CoT prompt."""
    return [Sample(prompts.cot_prompt(s.observation), s.output, "teacher", t.task_id)
            for t in trajectories for s in t.steps]


def qa_examples(questions: list[tuple[Observation, str, str]], prompts: Prompts) -> list[Sample]:
    """Direct-answer examples: each (observation, gold answer, task_id) -> the question and `Answer: <gold>`."""
    return [Sample(prompts.direct_prompt(obs), final_line(obs, gold), "qa", task_id) for obs, gold, task_id in questions]


def pool_examples(pool: list[Trajectory], prompts: Prompts, rng: random.Random, refine: bool, select: bool,
                  select_sizes: tuple[int, ...], select_per_episode: int) -> dict[str, list[Sample]]:
    """The self-generated objectives built from the pool, by kind."""
    return {
        "sft": sft_examples(pool, prompts),
        "refine": refine_examples(pool, prompts) if refine else [],
        "select": select_examples(pool, prompts, rng, select_sizes, select_per_episode) if select else [],
    }
