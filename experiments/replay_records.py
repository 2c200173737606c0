"""Reading a run directory for replay: every trajectory record file, as `Episode`s with a row's worth of facts.

Record files (paths relative to the run dir):
- `iter_K/teacher.jsonl`        split train, rollout "teacher"
- `iter_K/samples.jsonl`        split train, rollout "samples" (the pool)
- `iter_K/eval/<rollout>.jsonl` split test, rollout greedy / samples / majority@N / select@N
- `iter_K/eval.jsonl`           one-step (QA) runs only: select@N outputs, which exist nowhere else; each becomes a
                                one-step trajectory on the greedy episode's observation.
Image paths stay as the records hold them (relative to the run dir), so nothing here depends on where it lives.
An episode's id is `<file>:<episode_id>` (e.g. `iter_0/teacher.jsonl:click-test#0#teacher`), unique in a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from envs.episode import Observation, Step, Trajectory
from replay_causes import episode_cause, rollout_key, step_kind

_ITER = re.compile(r"iter_(\d+)$")


class ReplayError(Exception):
    """A problem with the run directory that the user must fix: reported as one line, non-zero exit."""


@dataclass
class Episode:
    """One recorded trajectory and where it came from."""

    uid: str  # "<file>:<episode_id>", prefixed "other:" for the --against run
    run: int  # 0: this run, 1: the --against run
    file: str  # record file, relative to its run dir
    split: str  # train | test
    iteration: int
    rollout: str  # teacher | samples | greedy | majority@N | select@N
    traj: Trajectory
    cause: str = ""  # why it failed ("" when it succeeded)
    step_kinds: list[str] = field(default_factory=list)  # per step: "" or why that step failed


@dataclass
class RunRecords:
    """Everything replay reads from one run directory."""

    dir: Path
    cfg: dict[str, Any]
    episodes: list[Episode]
    metrics: list[dict[str, Any]]
    multi_step: bool
    max_steps: int

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def iterations(self) -> list[int]:
        return sorted({e.iteration for e in self.episodes})


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ReplayError(f"{run_dir} is not a run directory: it has no config.yaml")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def record_files(run_dir: Path) -> list[tuple[str, str, int, str]]:
    """(relative file, split, iteration, rollout) of every trajectory record file, in a fixed order."""
    out = []
    for d in run_dir.glob("iter_*"):
        m = _ITER.match(d.name)
        if not m or not d.is_dir():
            continue
        k = int(m.group(1))
        for name, rollout in (("teacher.jsonl", "teacher"), ("samples.jsonl", "samples")):
            if (d / name).exists():
                out.append((f"{d.name}/{name}", "train", k, rollout))
        for f in (d / "eval").glob("*.jsonl") if (d / "eval").is_dir() else []:
            out.append((f"{d.name}/eval/{f.name}", "test", k, f.stem))

    return sorted(out, key=lambda r: (r[2], r[1] == "test", *rollout_key(r[3])))


def _read_lines(path: Path, rel: str) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ReplayError(f"{rel} line {n}: not JSON ({e.msg})") from None
    return rows


def read_trajectories(path: Path, rel: str) -> list[Trajectory]:
    """The trajectories of one record file; an unknown schema version or a malformed record is a ReplayError."""
    out = []
    for n, d in enumerate(_read_lines(path, rel), 1):
        try:
            out.append(Trajectory.from_dict(d))
        except ValueError as e:  # Trajectory.from_dict refuses a schema version it does not know
            raise ReplayError(f"{rel} line {n}: {e}") from None
        except (KeyError, TypeError) as e:
            raise ReplayError(f"{rel} line {n}: not a trajectory record ({type(e).__name__}: {e})") from None
    return out


def qa_select_trajectories(run_dir: Path, k: int, greedy: list[Trajectory]) -> dict[str, list[Trajectory]]:
    """One-step select@N outputs of `iter_k/eval.jsonl` as trajectories on the greedy episode's observation."""
    path = run_dir / f"iter_{k}" / "eval.jsonl"
    if not path.exists():
        return {}
    first = {(t.task_id, t.seed): t for t in greedy if t.steps}
    out: dict[str, list[Trajectory]] = {}
    for rec in _read_lines(path, f"iter_{k}/eval.jsonl"):
        g = first.get((rec.get("task_id"), rec.get("seed")))
        for n, sel in (rec.get("select") or {}).items():
            if g is None or "output" not in sel:  # multi-step select rollouts have their own record file
                continue
            step = Step(observation=g.steps[0].observation, output=sel["output"], parsed=sel.get("parsed"),
                        reward=float(sel["reward"]), done=True, info={"parsed": sel.get("parsed")})
            out.setdefault(f"select@{n}", []).append(Trajectory(
                episode_id=f"{g.task_id}#{g.seed}#select@{n}", env=g.env, task_id=g.task_id, seed=g.seed,
                steps=[step], reward=float(sel["reward"]), iteration=k, model=g.model, gold=g.gold))
    return out


def _multi_step(cfg: dict[str, Any], trajs: list[Trajectory]) -> bool:
    kind = (cfg.get("env") or {}).get("kind")
    if kind is not None:
        return kind == "miniwob"
    return any(len(t.steps) > 1 or (t.steps and t.steps[0].observation.last_action) for t in trajs)


def load_run(run_dir: Path, run: int = 0, test_only: bool = False) -> RunRecords:
    """Read every trajectory record of `run_dir` (only the test rollouts with `test_only`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReplayError(f"{run_dir} does not exist")
    cfg = read_config(run_dir)
    files = [f for f in record_files(run_dir) if not test_only or f[1] == "test"]
    loaded: list[tuple[str, str, int, str, list[Trajectory]]] = []
    for rel, split, k, rollout in files:
        trajs = read_trajectories(run_dir / rel, rel)
        loaded.append((rel, split, k, rollout, trajs))
        if rollout == "greedy":
            for name, sel in qa_select_trajectories(run_dir, k, trajs).items():
                if not (run_dir / f"iter_{k}" / "eval" / f"{name}.jsonl").exists():
                    loaded.append((f"iter_{k}/eval.jsonl", split, k, name, sel))
    loaded.sort(key=lambda r: (r[2], r[1] == "test", *rollout_key(r[3])))  # eval.jsonl's select@N after samples
    if not loaded:
        raise ReplayError(f"{run_dir} holds no trajectory records (iter_K/teacher.jsonl, samples.jsonl, eval/*.jsonl)")
    every = [t for *_, trajs in loaded for t in trajs]
    multi = _multi_step(cfg, every)
    longest = max((len(t.steps) for t in every), default=1)
    max_steps = int((cfg.get("env") or {}).get("max_steps") or longest) if multi else 1
    prefix = "other:" if run else ""
    episodes = []
    for rel, split, k, rollout, trajs in loaded:
        for t in trajs:
            episodes.append(Episode(uid=f"{prefix}{rel}:{t.episode_id}", run=run, file=rel, split=split, iteration=k,
                                    rollout=rollout, traj=t, cause=episode_cause(t, multi, max_steps),
                                    step_kinds=[step_kind(s, multi) for s in t.steps]))
    metrics_path = run_dir / "metrics.jsonl"
    metrics = _read_lines(metrics_path, "metrics.jsonl") if metrics_path.exists() else []
    return RunRecords(run_dir, cfg, episodes, metrics, multi, max_steps)


def find_episode(records: RunRecords, spec: str) -> Episode:
    """The episode named by `spec`: `<file>:<episode_id>`, or a bare episode_id that only one file holds."""
    exact = [e for e in records.episodes if e.uid == spec]
    if exact:
        return exact[0]
    bare = [e for e in records.episodes if e.traj.episode_id == spec]
    if len(bare) == 1:
        return bare[0]
    if not bare:
        raise ReplayError(f"no episode {spec!r} in {records.dir} (ids look like "
                          f"'iter_0/teacher.jsonl:click-test#0#teacher' or a bare 'click-test#0#teacher')")
    raise ReplayError(f"episode id {spec!r} is ambiguous: qualify it by file, one of "
                      + ", ".join(e.uid for e in bare[:6]) + (" ..." if len(bare) > 6 else ""))


def observation_dict(obs: Observation) -> dict[str, Any]:
    """An observation as compared by re-execution: everything but the screenshot files."""
    return {"text": obs.text, "context": obs.context, "last_action": obs.last_action, "task_id": obs.task_id,
            "seed": obs.seed, "answer_format": obs.answer_format, "choices": obs.choices}
