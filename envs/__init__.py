"""Environments: tasks, observations, how the model's text becomes an answer or action, and rewards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from envs.episode import EnvFailure, EpisodeEnv, Observation, Step, Trajectory
from envs.qa import QAEnv, read_items

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
    by_task: bool  # whether metrics are also reported per task_id (web tasks)


def env_split(cfg: DictConfig, split: str) -> EnvSplit:
    """The configured environment over one split ("train" or "test"), its episode list cut to
    `max_<split>_episodes` when set. QA environments share one loaded item list."""
    if cfg.kind == "synthetic":
        from envs.synthetic import build_dataset

        data_dir = build_dataset(cfg.name, cfg.data_dir, cfg.n_train, cfg.n_test, cfg.data_seed)
        items = {item.id: item for item in read_items(Path(data_dir) / f"{split}.jsonl")}
        make: Callable[[], EpisodeEnv] = lambda: QAEnv(cfg.name, items, data_dir, text_context=cfg.text_context)
    elif cfg.kind == "miniwob":
        from envs.miniwob import MiniWoBEnv

        kwargs = dict(tasks=list(cfg.tasks), split=split, episodes_per_task=cfg[f"{split}_episodes_per_task"],
                      max_steps=cfg.max_steps, image_dir=cfg.image_dir, refresh_freq=cfg.refresh_freq,
                      call_timeout=cfg.call_timeout, max_dom_lines=cfg.max_dom_lines, name=cfg.name)
        make = lambda: MiniWoBEnv(**kwargs)
    else:
        raise ValueError(f"unknown env kind {cfg.kind!r} in env config {cfg.name!r}")
    probe = make()  # environments are lazy: this starts no browser
    episodes, multi_step, by_task = probe.episodes(), probe.multi_step, probe.metrics_by_task
    probe.close()
    limit = cfg.get(f"max_{split}_episodes")
    return EnvSplit(cfg.name, make, episodes[:limit] if limit else episodes, cfg.num_envs,
                    cfg.max_steps if multi_step else 1, multi_step, by_task)
