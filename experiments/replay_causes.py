"""Why an episode failed, derived from its record alone, and the terminal summary of a run.

Episode cause (first rule that applies; "" for a success, reward > 0):
1. `Trajectory.error` set: "env failed to start".
2. No steps: "no steps".
3. One-step QA: parsed None -> "unparsable output", else "wrong answer".
4. The last step failed (`info["error"]`): its kind, "unparsable output" ("invalid action: ..."), "unknown ref"
   ("unknown ref N..."), "off-page click" ("click_xy(...) is outside the page ..."), "browser crashed", else
   "other error". The failed step is what the agent was doing when the episode ran out; a greedy episode
   stuck on an unparsable output is thus "unparsable output", the more useful of the two.
5. The last step was `done()`: "gave up".
6. `info["stuck"]` on the last step (a valid action that left the page unchanged): "stuck".
7. The task ended the episode unsolved (a wrong click, ...) before the budget, or with a negative reward:
   "wrong answer".
8. All `env.max_steps` steps used: "step budget spent"; otherwise "unfinished".
Each step also gets a kind (its error's kind, "stuck", or ""), shown per step and tallied in the report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Iterable

from envs.episode import Step, Trajectory

if TYPE_CHECKING:
    from replay_records import Episode

CAUSES = ("unparsable output", "unknown ref", "off-page click", "stuck", "step budget spent", "wrong answer",
          "gave up", "browser crashed", "env failed to start", "other error", "no steps", "unfinished")


def error_kind(error: str) -> str:
    """The kind of a step's `info["error"]` text, as MiniWoBEnv writes it."""
    if error.startswith("invalid action"):
        return "unparsable output"
    if error.startswith("unknown ref"):
        return "unknown ref"
    if "is outside the page" in error:
        return "off-page click"
    if error.startswith("browser crashed"):
        return "browser crashed"
    return "other error"


def step_kind(step: Step, multi_step: bool) -> str:
    """Why one step failed: its error's kind, "stuck", or "" (QA steps: "" or "unparsable output")."""
    if not multi_step:
        return "unparsable output" if step.parsed is None else ""
    if step.info.get("error"):
        return error_kind(str(step.info["error"]))
    return "stuck" if step.info.get("stuck") else ""


def episode_cause(t: Trajectory, multi_step: bool, max_steps: int) -> str:
    """Why the episode failed (the module docstring's rules), or "" when it succeeded."""
    if t.reward > 0:
        return ""
    if t.error:
        return "env failed to start"
    if not t.steps:
        return "no steps"
    last = t.steps[-1]
    if not multi_step:
        return "unparsable output" if last.parsed is None else "wrong answer"
    if last.info.get("error"):
        return error_kind(str(last.info["error"]))
    if last.parsed == "done()":
        return "gave up"
    if last.info.get("stuck"):
        return "stuck"
    if last.done and (last.reward < 0 or len(t.steps) < max_steps):
        return "wrong answer"
    return "step budget spent" if len(t.steps) >= max_steps else "unfinished"


def group_name(e: "Episode") -> str:
    """split/rollout, e.g. "train/samples", "test/greedy"."""
    return f"{e.split}/{e.rollout}"


def summary_rows(episodes: Iterable["Episode"]) -> list[dict]:
    """One row per (iteration, split/rollout, task), then an "all tasks" row per (iteration, split/rollout):
    episodes, successes, and the failure causes counted."""
    cells: dict[tuple[int, str, str], list["Episode"]] = defaultdict(list)
    for e in episodes:
        if e.run == 0:
            cells[(e.iteration, group_name(e), e.traj.task_id)].append(e)
            cells[(e.iteration, group_name(e), "")].append(e)
    rows = []
    def order(cell: tuple[int, str, str]) -> tuple:
        return (cell[0], _group_key(cell[1]), cell[2] == "", cell[2])  # a group's "all tasks" row after its tasks

    for (k, group, task), eps in sorted(cells.items(), key=lambda kv: order(kv[0])):
        causes = Counter(e.cause for e in eps if e.cause)
        rows.append({"iteration": k, "group": group, "task": task or "all tasks", "n": len(eps),
                     "success": sum(e.traj.reward > 0 for e in eps), "causes": dict(causes.most_common())})
    return rows


def _group_key(group: str) -> tuple:
    split, _, rollout = group.partition("/")
    return (split == "test", *rollout_key(rollout))


def rollout_key(rollout: str) -> tuple:
    """Rollouts in reading order: teacher, samples (train); greedy, samples, majority@N, select@N (test)."""
    base, _, n = rollout.partition("@")
    order = ("teacher", "greedy", "samples", "majority", "select")
    return (order.index(base) if base in order else 9, int(n) if n.isdigit() else 0, rollout)


def summary_text(rows: list[dict], many_tasks: bool = True) -> str:
    """The terminal summary: per iteration, split/rollout and task, success rate and failure causes."""
    lines, last_k = [], None
    width = max((len(r["task"]) for r in rows), default=9)
    for r in rows:
        if r["iteration"] != last_k:
            last_k = r["iteration"]
            lines.append(f"iteration {last_k}")
        if not many_tasks and r["task"] != "all tasks":
            continue
        rate = r["success"] / r["n"] if r["n"] else 0.0
        causes = ", ".join(f"{c} {n}" for c, n in r["causes"].items())
        lines.append(f"  {r['group']:<16} {r['task']:<{width}} {r['success']:>5}/{r['n']:<5} {rate:6.1%}"
                     + (f"   {causes}" if causes else ""))
    return "\n".join(lines)
