"""Test-time metrics: test@1 (greedy CoT) and, for each N, maj@N, select@N, pass@N over N sampled solutions.

- maj@N: the most frequent parsed answer/action among N samples wins (unparsable ones do not vote; ties go
  to the one reached first).
- select@N: the N samples go into the self-select prompt, decoded greedily; its final line is the answer
  (N samples with one answer leave nothing to select: that answer stands, with no select call).
- pass@N: any of N independently sampled episodes succeeds (an oracle upper bound).
Success means reward > 0.

One-step episodes (QA) share one set of N_max samples across every N (the first N of them), as the paper's
scaling plots do. Multi-step episodes (web tasks) vote or self-select at every step, so each N is its own
rollout; pass@N uses the first N of N_max sampled episodes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from agent.policy import Policy
from envs.episode import EpisodeEnv, Trajectory
from reflection.rollout import majority_text, rollout, self_select

Outcomes = dict[str, list[bool]]  # metric -> success per episode, in episode order


def _groups(trajectories: list[Trajectory], episodes: list[tuple[str, int]]) -> list[list[Trajectory]]:
    by_episode: dict[tuple[str, int], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_episode[(t.task_id, t.seed)].append(t)
    return [sorted(by_episode[e], key=lambda t: t.sample) for e in episodes]


def _one_step_ns(policy: Policy, make_env: Callable[[], EpisodeEnv], episodes: list[tuple[str, int]],
                 groups: list[list[Trajectory]], ns: list[int], select_max_new_tokens: int,
                 records: list[dict[str, Any]]) -> Outcomes:
    """maj/select/pass@N for one-step episodes, from the shared samples."""
    out: Outcomes = {}
    env = make_env()
    for n in ns:
        majority, chosen = [], []
        for (task_id, seed), group in zip(episodes, groups):
            env.reset(seed=seed, options={"task_id": task_id})
            text = majority_text(env, [t.steps[0].output for t in group[:n]])
            majority.append(next(t.reward > 0 for t in group[:n] if t.steps[0].output == text))
        out[f"maj@{n}"] = majority
        out[f"pass@{n}"] = [any(t.reward > 0 for t in g[:n]) for g in groups]
        if n == 1:
            out["select@1"] = [g[0].reward > 0 for g in groups]
            continue
        outputs = self_select(policy, [g[0].steps[0].observation for g in groups],
                              [[t.steps[0].output for t in g[:n]] for g in groups],
                              [[t.steps[0].parsed for t in g[:n]] for g in groups], select_max_new_tokens,
                              f"eval select@{n}")
        for record, (task_id, seed), text in zip(records, episodes, outputs):
            env.reset(seed=seed, options={"task_id": task_id})
            _, reward, _, _, info = env.step(text)
            record["select"][str(n)] = {"output": text, "parsed": info.get("parsed"), "reward": reward}
            chosen.append(reward > 0)
        out[f"select@{n}"] = chosen
    env.close()
    return out


def evaluate(policy: Policy, make_env: Callable[[], EpisodeEnv], episodes: list[tuple[str, int]], ns: list[int],
             select_max_new_tokens: int = 32, num_envs: int = 256, max_steps: int = 1, iteration: int = 0,
             model_name: str = "", by_task: bool = False,
             pass_at_n: bool = True) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Metrics as {group: {metric: value}} (group "all", plus every task_id when `by_task`), and one record
    per episode (greedy output, samples, select outputs) for replay. `pass_at_n=False` skips pass@N of
    multi-step episodes, which costs a rollout of N sampled episodes per test episode of its own."""
    run = dict(make_env=make_env, episodes=episodes, num_envs=num_envs, max_steps=max_steps, iteration=iteration,
               model_name=model_name, select_max_new_tokens=select_max_new_tokens)
    greedy = rollout(policy, greedy=True, desc="eval greedy", **run)
    outcomes: Outcomes = {"test@1": [t.reward > 0 for t in greedy]}
    records = [{"task_id": t.task_id, "seed": t.seed, "gold": t.gold, "greedy": [s.output for s in t.steps],
                "greedy_reward": t.reward, "samples": [], "select": {}} for t in greedy]
    n_max = max(ns, default=0)
    if n_max and (max_steps == 1 or pass_at_n):
        groups = _groups(rollout(policy, n=n_max, desc=f"eval sample x{n_max}", **run), episodes)
        for record, group in zip(records, groups):
            record["samples"] = [{"outputs": [s.output for s in t.steps], "parsed": t.answer, "reward": t.reward}
                                 for t in group]
        if max_steps == 1:
            outcomes.update(_one_step_ns(policy, make_env, episodes, groups, ns, select_max_new_tokens, records))
        else:
            outcomes.update({f"pass@{n}": [any(t.reward > 0 for t in g[:n]) for g in groups] for n in ns})
    if max_steps > 1:
        for n in ns:
            for decide, metric in (("majority", "maj"), ("select", "select")):
                name = f"{metric}@{n}"
                trajs = rollout(policy, decide=decide, k=n, desc=f"eval {name}", **run)
                outcomes[name] = [t.reward > 0 for t in trajs]
                for record, t in zip(records, trajs):
                    record.setdefault(decide, {})[str(n)] = {"outputs": [s.output for s in t.steps],
                                                             "reward": t.reward}
    metrics = {"all": {m: sum(v) / len(v) for m, v in outcomes.items()}}
    if by_task:
        for task in dict.fromkeys(t for t, _ in episodes):
            idx = [i for i, (t, _) in enumerate(episodes) if t == task]
            metrics[task] = {m: sum(v[i] for i in idx) / len(idx) for m, v in outcomes.items()}
    return metrics, records
