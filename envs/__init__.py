"""Environments: tasks, observations, how the model's text becomes an answer or action, and rewards."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from envs.episode import EnvFailure, EpisodeEnv, Observation, Step, Trajectory
from envs.qa import QAEnv, read_items

log = logging.getLogger(__name__)

__all__ = ["EnvFailure", "EnvSplit", "EpisodeEnv", "Observation", "Step", "Trajectory", "env_split"]


@dataclass
class EnvSplit:
    """The environments of one split: how to make one, the episodes to play, and how many play at once."""

    name: str
    make: Callable[[], EpisodeEnv]  # one call = one environment (one browser for web tasks, started lazily)
    episodes: list[tuple[str, int]]  # (task_id, seed) pairs, in a fixed order
    num_envs: int  # environments stepping together
    max_steps: int  # step budget per episode
    multi_step: bool  # whether an episode can take more than one step (web tasks); QA episodes are one step
    groups: dict[str, dict[str, str]]  # task_id -> the groups metrics are also reported by, e.g. {"task": ...}
    stats: dict[str, float]  # figures about the data worth a metric row (e.g. teacher rows matched)


def env_split(cfg: DictConfig, split: str, teacher_file: str | None = None) -> EnvSplit:
    """The configured environment over one split ("train" or "test"), its episodes a seeded subset of
    `max_<split>_episodes` when set. QA environments share one loaded item list. `teacher_file`: teacher
    chain of thought to import onto a benchmark's items (`warmup.teacher_file`; see envs/benchmarks/teacher.py).

    A benchmark that is missing or damaged on disk raises `DataError`, which says what to fix."""
    stats: dict[str, float] = {}
    if cfg.kind == "benchmark":
        loaded, stats = benchmark_items(cfg, split, teacher_file)
        # one dict for every environment of the split: a rollout makes up to num_envs (4096) of them, and each
        # would otherwise index its own copy of the item list (7,686 TabMWP test items)
        items = {item.id: item for item in loaded}
        make: Callable[[], EpisodeEnv] = lambda: QAEnv(cfg.name, items, cfg.data_dir, cfg.text_context,
                                                       tuple(cfg.breakdown))
    elif cfg.kind == "synthetic":
        from envs.synthetic import build_dataset

        data_dir = build_dataset(cfg.name, cfg.data_dir, cfg.n_train, cfg.n_test, cfg.data_seed)
        items = {item.id: item for item in read_items(Path(data_dir) / f"{split}.jsonl")}
        make = lambda: QAEnv(cfg.name, items, data_dir, cfg.text_context, breakdown=())
    elif cfg.kind == "miniwob":
        from envs.miniwob import MiniWoBEnv

        kwargs = dict(tasks=list(cfg.tasks), split=split, episodes_per_task=cfg[f"{split}_episodes_per_task"],
                      max_steps=cfg.max_steps, image_dir=cfg.image_dir, refresh_freq=cfg.refresh_freq,
                      call_timeout=cfg.call_timeout, max_dom_lines=cfg.max_dom_lines, name=cfg.name)
        make = lambda: MiniWoBEnv(**kwargs)
    else:
        raise ValueError(f"unknown env kind {cfg.kind!r} in env config {cfg.name!r}")
    probe = make()  # environments are lazy: this starts no browser
    episodes = probe.episodes()
    limit = cfg.get(f"max_{split}_episodes")
    if limit and limit < len(episodes):  # a seeded subset, in the split's order
        keep = set(random.Random(cfg.subset_seed).sample(range(len(episodes)), limit))
        episodes = [e for i, e in enumerate(episodes) if i in keep]
    groups = {task: probe.groups(task) for task in dict.fromkeys(t for t, _ in episodes)}
    split_ = EnvSplit(cfg.name, make, episodes, cfg.num_envs, cfg.max_steps if probe.multi_step else 1,
                      probe.multi_step, {t: g for t, g in groups.items() if g}, stats)
    probe.close()
    return split_


def benchmark_items(cfg: DictConfig, split: str, teacher_file: str | None) -> tuple[list, dict[str, float]]:
    """A benchmark's items of one split, with the teacher chain of thought of `teacher_file` on them."""
    from envs.benchmarks import DataError, import_teacher, load_items

    if not cfg.path:
        from envs.benchmarks import BENCHMARKS
        from envs.benchmarks.common import no_data

        bench = BENCHMARKS[cfg.name]
        raise no_data(cfg.name, bench.layout, bench.published, None, "no data: env.path is not set")
    items = load_items(cfg.name, cfg.path, cfg[f"{split}_split"], cfg.data_dir, **cfg.loader_options)
    if not items:
        raise DataError(f"{cfg.name}: the {cfg[f'{split}_split']} split under {cfg.path} holds no items")
    if split != "train" or not teacher_file:
        return items, {}
    result = import_teacher(teacher_file, items, drop_wrong=cfg.teacher_drop_wrong)
    for item in items:
        item.rationale = result.rationales.get(item.id, item.rationale)
    log.info("teacher file %s: %d rows matched, %d unmatched, %d with a wrong answer%s", teacher_file,
             result.matched, result.unmatched, result.wrong, " (dropped)" if cfg.teacher_drop_wrong else "")
    return items, {"teacher_rows_matched": result.matched, "teacher_rows_unmatched": result.unmatched,
                   "teacher_rows_wrong": result.wrong, "teacher_rows_dropped": result.dropped}
