"""Side-by-side material: one test episode across iterations, and two runs on their shared test episodes.

Both are indexes into the episode table (uids); the pages fetch the trajectories themselves.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from replay_records import Episode, RunRecords

Key = tuple[str, int]  # (task_id, seed)


def _test_table(episodes: list[Episode], run: int) -> dict[Key, dict[str, dict[int, list[Episode]]]]:
    """(task_id, seed) -> rollout -> iteration -> the episodes (the N samples of a "samples" rollout)."""
    table: dict[Key, dict[str, dict[int, list[Episode]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for e in episodes:
        if e.run == run and e.split == "test":
            table[(e.traj.task_id, e.traj.seed)][e.rollout][e.iteration].append(e)
    return table


def _entry(eps: list[Episode]) -> dict[str, Any]:
    first = sorted(eps, key=lambda e: e.traj.sample)[0]
    return {"uid": first.uid, "ok": first.traj.reward > 0, "cause": first.cause, "steps": len(first.traj.steps)}


def iteration_compare(records: RunRecords) -> list[dict[str, Any]]:
    """Per test episode and rollout: its outcome at every iteration, and how it changed first -> last."""
    out = []
    for (task, seed), rollouts in _test_table(records.episodes, 0).items():
        for rollout, by_iter in rollouts.items():
            iters = {k: _entry(eps) for k, eps in sorted(by_iter.items())}
            ks = sorted(iters)
            first, last = iters[ks[0]]["ok"], iters[ks[-1]]["ok"]
            change = "same" if len(ks) == 1 or first == last else ("fixed" if last else "broken")
            out.append({"task": task, "seed": seed, "rollout": rollout, "iters": {str(k): v for k, v in iters.items()},
                        "change": change})
    return sorted(out, key=lambda r: (r["rollout"] != "greedy", r["rollout"], r["task"], r["seed"]))


def against_compare(records: RunRecords, other: RunRecords) -> list[dict[str, Any]]:
    """Per test episode (task_id, seed) and rollout both runs played: each run's outcome at each iteration."""
    mine, theirs = _test_table(records.episodes, 0), _test_table(other.episodes, 1)
    out = []
    for key in sorted(set(mine) & set(theirs)):
        for rollout in sorted(set(mine[key]) & set(theirs[key])):
            a = {str(k): _entry(eps) for k, eps in sorted(mine[key][rollout].items())}
            b = {str(k): _entry(eps) for k, eps in sorted(theirs[key][rollout].items())}
            a_last, b_last = a[max(a, key=int)]["ok"], b[max(b, key=int)]["ok"]
            verdict = "both" if a_last and b_last else "neither" if not (a_last or b_last) else \
                ("this only" if a_last else "other only")
            out.append({"task": key[0], "seed": key[1], "rollout": rollout, "a": a, "b": b, "verdict": verdict})
    return sorted(out, key=lambda r: (r["rollout"] != "greedy", r["rollout"], r["task"], r["seed"]))


def against_summary(records: RunRecords, other: RunRecords, shared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Success on the shared episodes, per rollout and task, each run at its last iteration."""
    cells: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)
    for r in shared:
        pair = (r["a"][max(r["a"], key=int)]["ok"], r["b"][max(r["b"], key=int)]["ok"])
        cells[(r["rollout"], r["task"])].append(pair)
        cells[(r["rollout"], "all tasks")].append(pair)
    return [{"rollout": ro, "task": task, "n": len(v), "a": sum(a for a, _ in v), "b": sum(b for _, b in v)}
            for (ro, task), v in sorted(cells.items(), key=lambda kv: (kv[0][0] != "greedy", kv[0][0],
                                                                        kv[0][1] == "all tasks", kv[0][1]))]
