"""Test-time metrics: test@1 (greedy CoT) and, for each N, maj@N, select@N, pass@N over N sampled solutions.

- maj@N: the most frequent parsed answer/action among N samples wins (unparsable ones do not vote; ties go
  to the one reached first).
- select@N: the N samples go into the self-select prompt, decoded greedily; its final line is the answer
  (N samples with one answer leave nothing to select: that answer stands, with no select call). With
  `select_orders` > 1 the prompt is asked once per rotation of the N samples and the most frequent choice
  counts (the paper asks once: 1).
- pass@N: any of N independently sampled episodes succeeds (an oracle upper bound).
Success means reward > 0.

One-step episodes (QA) share one set of N_max samples across every N (the first N of them), as the paper's
scaling plots do. Multi-step episodes (web tasks) vote or self-select at every step, so each N is its own
rollout; pass@N uses the first N of N_max sampled episodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from agent.policy import Policy
from agent.prompts import Prompts
from envs import EnvSplit
from envs.episode import Trajectory
from reflection.rollout import EnvPool, Play, majority_index, majority_text, rollout, self_select

Outcomes = dict[str, list[bool]]  # metric -> success per episode, in episode order
Group = str | tuple[str, str]  # "all", or (key, value) such as ("task", "click-test")
Rollouts = dict[str, list[Trajectory]]  # rollout name -> its trajectories


def _groups(trajectories: list[Trajectory], episodes: list[tuple[str, int]]) -> list[list[Trajectory]]:
    by_episode: dict[tuple[str, int], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_episode[(t.task_id, t.seed)].append(t)
    return [sorted(by_episode[e], key=lambda t: t.sample) for e in episodes]


def _one_step_ns(policy: Policy, prompts: Prompts, split: EnvSplit, groups: list[list[Trajectory]], ns: list[int],
                 select_max_new_tokens: int, select_orders: int, records: list[dict[str, Any]]) -> Outcomes:
    """maj/select/pass@N for one-step episodes, from the shared samples."""
    out: Outcomes = {}
    env = split.make()
    for n in ns:
        majority, chosen = [], []
        for (task_id, seed), group in zip(split.episodes, groups):
            env.reset(seed=seed, options={"task_id": task_id})
            text = majority_text(env, [t.steps[0].output for t in group[:n]])
            majority.append(next(t.reward > 0 for t in group[:n] if t.steps[0].output == text))
        out[f"maj@{n}"] = majority
        out[f"pass@{n}"] = [any(t.reward > 0 for t in g[:n]) for g in groups]
        if n == 1:
            out["select@1"] = [g[0].reward > 0 for g in groups]
            continue
        outputs = self_select(policy, prompts, [g[0].steps[0].observation for g in groups],
                              [[t.steps[0].output for t in g[:n]] for g in groups],
                              [[t.steps[0].parsed for t in g[:n]] for g in groups], select_max_new_tokens,
                              f"eval select@{n}", orders=select_orders)
        for record, (task_id, seed), texts in zip(records, split.episodes, outputs):
            results = []
            for text in texts:
                env.reset(seed=seed, options={"task_id": task_id})
                _, reward, _, _, info = env.step(text)
                results.append({"output": text, "parsed": info.get("parsed"), "reward": reward})
            best = dict(results[majority_index([r["parsed"] for r in results])])
            if len(results) > 1:  # each candidate order's choice (the first: the order maj@N and pass@N see)
                best["orders"] = results
            record["select"][str(n)] = best
            chosen.append(best["reward"] > 0)
        out[f"select@{n}"] = chosen
    env.close()
    return out


@dataclass(frozen=True)
class EvalConfig:
    """What to measure on the test split (the `eval` block of the config)."""

    ns: list[int]  # N for maj@N, select@N, pass@N ([]: test@1 only)
    select_max_new_tokens: int
    pass_at_n: bool  # multi-step episodes: pass@N costs a rollout of N sampled episodes per test episode
    select_orders: int  # select@N: candidate orders the select prompt is asked in, the most frequent choice wins


def evaluate(policy: Policy, prompts: Prompts, split: EnvSplit, cfg: EvalConfig, iteration: int = 0,
             model_name: str = "", pool: EnvPool | None = None
             ) -> tuple[dict[Group, dict[str, float]], list[dict[str, Any]], Rollouts]:
    """Metrics as {group: {metric: value}}: group "all", and a (key, value) group for each of the split's
    groups (e.g. ("task", "click-test"), ("domain", "science")); and one record per episode (greedy output,
    samples, select outputs); and every rollout's trajectories by name ("greedy", "samples", "majority@N",
    "select@N") for replay. Every rollout plays on the environments of `pool` (one is made and closed here when
    none is given), so the browsers start once for the whole evaluation."""
    episodes, ns = split.episodes, list(cfg.ns)
    if pool is None:
        with EnvPool(split) as own:
            return evaluate(policy, prompts, split, cfg, iteration, model_name, own)

    def run(play: Play, desc: str) -> list[Trajectory]:
        return rollout(policy, prompts, split, play, iteration, model_name, desc, pool=pool)

    greedy = run(Play(greedy=True), "eval greedy")
    rollouts: Rollouts = {"greedy": greedy}
    outcomes: Outcomes = {"test@1": [t.reward > 0 for t in greedy]}
    records = [{"task_id": t.task_id, "seed": t.seed, "gold": t.gold, "greedy": [s.output for s in t.steps],
                "greedy_reward": t.reward, "samples": [], "select": {}} for t in greedy]
    n_max = max(ns, default=0)
    if n_max and (not split.multi_step or cfg.pass_at_n):
        rollouts["samples"] = run(Play(n=n_max), f"eval sample x{n_max}")
        groups = _groups(rollouts["samples"], episodes)
        for record, group in zip(records, groups):
            record["samples"] = [{"outputs": [s.output for s in t.steps], "parsed": t.answer, "reward": t.reward}
                                 for t in group]
        if not split.multi_step:
            outcomes.update(_one_step_ns(policy, prompts, split, groups, ns, cfg.select_max_new_tokens,
                                          cfg.select_orders, records))
        else:
            outcomes.update({f"pass@{n}": [any(t.reward > 0 for t in g[:n]) for g in groups] for n in ns})
    if split.multi_step:
        for n in ns:
            for decide, metric in (("majority", "maj"), ("select", "select")):
                name = f"{metric}@{n}"
                trajs = run(Play(decide=decide, k=n, select_max_new_tokens=cfg.select_max_new_tokens,
                                 select_orders=cfg.select_orders), f"eval {name}")
                rollouts[f"{decide}@{n}"] = trajs
                outcomes[name] = [t.reward > 0 for t in trajs]
                for record, t in zip(records, trajs):
                    record.setdefault(decide, {})[str(n)] = {"outputs": [s.output for s in t.steps],
                                                             "reward": t.reward}
    metrics: dict[Group, dict[str, float]] = {"all": {m: sum(v) / len(v) for m, v in outcomes.items()}}
    for group, idx in group_members([t for t, _ in episodes], split.groups).items():
        metrics[group] = {m: sum(v[i] for i in idx) / len(idx) for m, v in outcomes.items()}
    return metrics, records, rollouts


def group_members(task_ids: list[str], groups: dict[str, dict[str, str]]) -> dict[Group, list[int]]:
    """(key, value) -> the indices of the episodes in that group, in order of first appearance."""
    members: dict[Group, list[int]] = defaultdict(list)
    for i, task_id in enumerate(task_ids):
        for group in groups.get(task_id, {}).items():
            members[group].append(i)
    return dict(members)
