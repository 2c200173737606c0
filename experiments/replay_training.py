"""What self-training learned from each train episode: its contrastive pair and the examples built from it.

Iteration k trains on the pool of samples drawn by models 0..k-1 (reflection/loop.py). For every train episode
(task_id, seed) of that pool this rebuilds, with reflection.examples itself (never a copy of its rules):
- the most recent positive and negative trajectories and their decision step (`decision_step`),
- the self-refine example (`refine_examples`: wrong output -> corrected output),
- the self-select examples (`select_examples`: shuffled candidates -> the right final line), with each
  candidate traced back to its trajectory and step,
- the steps SFT teaches (`acted` steps of the most recent positive).
The select examples use `random.Random(seed + k)` as the loop does, consumed episode by episode in the loop's
order, so they are the very examples that trained model k.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from agent.prompts import Messages, Prompts
from envs.episode import Step, Trajectory
from reflection.examples import acted, candidates_at, decision_step, refine_examples, select_examples

try:  # why a pair has no decision step ("diverged" / "same"), where reflection.examples says so
    from reflection.examples import compare as compare_pair
except ImportError:  # older reflection.examples: decision_step only
    compare_pair = None
from replay_records import Episode, RunRecords


class RecordingRandom(random.Random):
    """A random.Random that remembers what `sample` returned, so the candidates of each select example (the
    lists select_examples draws from) are known. Same stream as random.Random with the same seed."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.samples: list[list[Any]] = []

    def sample(self, population, k, **kwargs):  # type: ignore[override]
        out = super().sample(population, k, **kwargs)
        self.samples.append(out)
        return out


def _recency(t: Trajectory) -> tuple[int, int]:
    return (t.iteration, t.sample)  # "most recent", as reflection.examples defines it


def message_text(messages: Messages) -> str:
    """The text parts of a chat prompt, joined."""
    return "\n".join(p["text"] for m in messages for p in m["content"] if p.get("type") == "text")


def _prompts(records: RunRecords) -> Prompts:
    return Prompts(**records.cfg["prompts"])


def _method(records: RunRecords) -> dict[str, Any]:
    return records.cfg.get("method") or {}


def training_iterations(records: RunRecords) -> list[int]:
    """The iterations k >= 1 that trained on a pool (those whose pool 0..k-1 has samples)."""
    sampled = sorted({e.iteration for e in records.episodes if e.rollout == "samples" and e.split == "train"})
    if not sampled or not _method(records).get("self_train", True):
        return []
    last = max(records.iterations + [sampled[-1] + 1])
    return [k for k in range(1, last + 1) if any(s < k for s in sampled)]


def contrasts(records: RunRecords) -> list[dict[str, Any]]:
    """One record per (training iteration, train episode) with a positive and a negative in its pool."""
    prompts, method, seed = _prompts(records), _method(records), int(records.cfg.get("seed", 0))
    sizes = tuple(method.get("select_sizes", [3]))
    per_episode = int(method.get("select_per_episode", 2))
    samples = [e for e in records.episodes if e.run == 0 and e.split == "train" and e.rollout == "samples"]
    out = []
    for k in training_iterations(records):
        pool = [e for e in samples if e.iteration < k]
        groups: dict[tuple[str, int], list[Episode]] = defaultdict(list)
        for e in pool:  # insertion order = the loop's episode order
            groups[(e.traj.task_id, e.traj.seed)].append(e)
        rng = RecordingRandom(seed + k)
        for (task, ep_seed), eps in groups.items():
            rec = _contrast(k, task, ep_seed, eps, prompts, rng, method, sizes, per_episode)
            if rec is not None:
                out.append(rec)
    return out


def _where(eps: list[Episode]) -> dict[int, tuple[str, int]]:
    """id(step) -> (episode uid, step index): to name the trajectory step each candidate came from."""
    return {id(s): (e.uid, i) for e in eps for i, s in enumerate(e.traj.steps)}


def _contrast(k: int, task: str, seed: int, eps: list[Episode], prompts: Prompts, rng: RecordingRandom,
              method: dict[str, Any], sizes: tuple[int, ...], per_episode: int) -> dict[str, Any] | None:
    trajs = [e.traj for e in eps]
    uid = {id(e.traj): e.uid for e in eps}
    pos = [t for t in trajs if t.label == "positive"]
    neg = [t for t in trajs if t.label == "negative"]
    if not pos:
        return None
    good = max(pos, key=_recency)
    rec: dict[str, Any] = {"k": k, "task": task, "seed": seed, "pos": uid[id(good)], "n_pos": len(pos),
                           "n_neg": len(neg), "members": [e.uid for e in eps],
                           "sft_steps": [i for i in range(len(good.steps)) if acted(good, i)],
                           "neg": None, "decision": None, "refine": None, "select": []}
    if not neg:
        return rec
    bad = max(neg, key=_recency)
    rec["neg"] = uid[id(bad)]
    point = decision_step(good, bad)
    rec["decision"] = list(point) if point else None
    rec["why"] = compare_pair(good, bad)[0] if compare_pair else ("decision" if point else "none")
    if point is None:
        return rec
    if method.get("refine", True):
        for s in refine_examples(trajs, prompts):
            rec["refine"] = {"wrong": bad.steps[point[1]].output, "target": s.target,
                             "prompt": message_text(s.messages)}
    if method.get("select", True):
        where = _where(eps)
        n_before = len(rng.samples)
        made = select_examples(trajs, prompts, rng, sizes, per_episode)
        chosen = rng.samples[-1] if made and len(rng.samples) > n_before else []
        obs = good.steps[point[0]].observation
        pos_c, neg_c = candidates_at(trajs, obs)
        for s, cands in zip(made, chosen):
            rec["select"].append({"target": s.target, "prompt": message_text(s.messages),
                                  "candidates": [_candidate(ok, st, where) for ok, st in cands]})
        rec["n_candidates"] = [len(pos_c), len(neg_c)]
    return rec


def _candidate(ok: bool, step: Step, where: dict[int, tuple[str, int]]) -> dict[str, Any]:
    uid, i = where.get(id(step), ("", -1))
    return {"ok": ok, "output": step.output, "parsed": step.parsed, "uid": uid, "step": i}
