"""The sample pool on disk: one JSONL of trajectories per iteration, accumulated across iterations.

Image paths are stored relative to the run directory when they live inside it, so a run folder can be
moved or shared as a whole. Files are written atomically: a crash never leaves a half-written pool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from envs.episode import Trajectory
from envs.files import atomic_writer


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a truncated or corrupt one raises ValueError naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON on line {n} ({e.msg}): the file is corrupt") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text after line {len(rows)}: the file is corrupt") from e
    return rows


def _map_images(traj: dict[str, Any], fn) -> dict[str, Any]:
    for step in traj["steps"]:
        step["observation"]["images"] = [fn(p) for p in step["observation"]["images"]]
    return traj


def save_trajectories(path: Path, trajectories: list[Trajectory], run_dir: Path) -> None:
    root = Path(run_dir).resolve()

    def rel(p: str) -> str:
        full = Path(p).resolve()
        return os.path.relpath(full, root) if full.is_relative_to(root) else str(full)

    write_jsonl(path, (_map_images(t.to_dict(), rel) for t in trajectories))


def load_trajectories(path: Path, run_dir: Path) -> list[Trajectory]:
    root = Path(run_dir).resolve()
    try:  # a record of a newer schema (a run directory written by a newer r3v) is refused, naming the file
        return [Trajectory.from_dict(_map_images(d, lambda p: str(root / p))) for d in read_jsonl(path)]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: a trajectory record is malformed ({type(e).__name__}: {e})") from e
    except ValueError as e:
        raise ValueError(e.args[0] if str(path) in str(e) else f"{path}: {e}") from e


def samples_path(run_dir: Path, iteration: int) -> Path:
    """Where the samples drawn by the model of `iteration` live."""
    return Path(run_dir) / f"iter_{iteration}" / "samples.jsonl"


def load_pool(run_dir: Path, up_to: int) -> list[Trajectory]:
    """Every trajectory sampled by the models of iterations 0..up_to (those that exist)."""
    pool: list[Trajectory] = []
    for k in range(up_to + 1):
        path = samples_path(run_dir, k)
        if path.exists():
            pool.extend(load_trajectories(path, run_dir))
    return pool
