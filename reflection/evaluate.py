"""Test-time metrics: test@1 (greedy CoT), and for each N: maj@N, select@N, pass@N over N sampled solutions.

- maj@N: the most frequent parsed answer among the first N samples (unparsable ones do not vote; ties go
  to the answer reached first); correct when a sample with that answer was rewarded.
- pass@N: any of the first N samples is correct (an oracle upper bound).
- select@N: the first N samples go into the self-select prompt, decoded greedily; its final line is
  stepped into the environment like any answer. select@1 = accuracy of the first sample.
The N samples of an episode are shared by all N (the first N of N_max), as in the paper's scaling plots.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable

from agent.policy import Policy
from agent.prompts import select_prompt
from envs.episode import EpisodeEnv, Trajectory
from reflection.rollout import rollout


def majority(trajectories: list[Trajectory]) -> float:
    """Reward of the majority answer among these trajectories (0.0 when none parses)."""
    votes = Counter(t.answer for t in trajectories if t.answer is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(t.answer for t in trajectories if t.answer is not None and votes[t.answer] == top)
    return max(float(t.reward > 0) for t in trajectories if t.answer == winner)


def evaluate(policy: Policy, make_env: Callable[[], EpisodeEnv], episodes: list[tuple[str, int]],
             ns: list[int], select_max_new_tokens: int = 32, num_envs: int = 256,
             iteration: int = 0, model_name: str = "") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics by name, and one record per episode (greedy output, samples, select outputs) for replay."""
    greedy = rollout(policy, make_env, episodes, n=1, greedy=True, num_envs=num_envs, iteration=iteration,
                     model_name=model_name, desc="eval greedy")
    metrics = {"test@1": sum(t.reward > 0 for t in greedy) / len(greedy)}
    records = [{"task_id": t.task_id, "seed": t.seed, "gold": t.gold, "greedy": t.steps[-1].output,
                "greedy_reward": t.reward, "samples": [], "select": {}} for t in greedy]
    n_max = max(ns, default=0)
    if n_max == 0:
        return metrics, records
    sampled = rollout(policy, make_env, episodes, n=n_max, greedy=False, num_envs=num_envs, iteration=iteration,
                      model_name=model_name, desc=f"eval sample x{n_max}")
    by_episode: dict[tuple[str, int], list[Trajectory]] = defaultdict(list)
    for t in sampled:
        by_episode[(t.task_id, t.seed)].append(t)
    groups = [sorted(by_episode[e], key=lambda t: t.sample) for e in episodes]
    for record, group in zip(records, groups):
        record["samples"] = [{"output": t.steps[-1].output, "parsed": t.answer, "reward": t.reward} for t in group]

    env = make_env()
    for n in ns:
        metrics[f"maj@{n}"] = sum(majority(g[:n]) for g in groups) / len(groups)
        metrics[f"pass@{n}"] = sum(any(t.reward > 0 for t in g[:n]) for g in groups) / len(groups)
        if n == 1:
            metrics["select@1"] = sum(g[0].reward > 0 for g in groups) / len(groups)
            continue
        prompts = [select_prompt(g[0].steps[0].observation, [t.steps[0].output for t in g[:n]]) for g in groups]
        choices = policy.generate(prompts, n=1, greedy=True, max_new_tokens=select_max_new_tokens,
                                  desc=f"eval select@{n}")
        correct = 0.0
        for record, (task_id, seed), (text,) in zip(records, episodes, choices):
            env.reset(seed=seed, options={"task_id": task_id})
            _, reward, _, _, info = env.step(text)
            record["select"][str(n)] = {"output": text, "parsed": info.get("parsed"), "reward": reward}
            correct += reward > 0
        metrics[f"select@{n}"] = correct / len(groups)
    env.close()
    return metrics, records
