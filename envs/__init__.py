"""Environments: tasks, observations, how the model's text becomes an answer or action, and rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from envs.episode import EpisodeEnv, Observation, Step, Trajectory
from envs.qa import QAEnv, read_items

__all__ = ["EpisodeEnv", "Observation", "Step", "Trajectory", "env_factory"]


def env_factory(cfg: DictConfig, split: str) -> Callable[[], EpisodeEnv]:
    """A function that makes a fresh environment of the configured kind over one split ("train"/"test").

    Rollouts call it once per parallel episode slot; QA environments share one loaded item list.
    """
    if cfg.kind == "synthetic":
        from envs.synthetic import build_dataset

        data_dir = build_dataset(cfg.name, cfg.data_dir, cfg.n_train, cfg.n_test, cfg.data_seed)
        items = {item.id: item for item in read_items(Path(data_dir) / f"{split}.jsonl")}
        return lambda: QAEnv(cfg.name, items, data_dir, text_context=cfg.text_context)
    if cfg.kind == "miniwob":
        from envs.miniwob import MiniWoBEnv

        # one call = one browser, started lazily on the first reset
        kwargs = dict(tasks=list(cfg.tasks), split=split, episodes_per_task=cfg[f"{split}_episodes_per_task"],
                      max_steps=cfg.max_steps, image_dir=cfg.image_dir, refresh_freq=cfg.refresh_freq,
                      call_timeout=cfg.call_timeout, max_dom_lines=cfg.max_dom_lines, name=cfg.name)
        return lambda: MiniWoBEnv(**kwargs)
    raise ValueError(f"unknown env kind {cfg.kind!r} in env config {cfg.name!r}")
