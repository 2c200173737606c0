"""Objects the tests build the way a run does: from the config's own defaults (conf/), not from code."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from agent.policy import Generation, Policy, Sampling
from agent.prompts import Prompts

CONF = Path(__file__).resolve().parents[1] / "conf"
PROMPTS = Prompts(**OmegaConf.load(CONF / "prompts" / "default.yaml"))


def generation(**overrides) -> Generation:
    """conf/config.yaml's `generation` block, with overrides."""
    return Generation.from_config({**OmegaConf.load(CONF / "config.yaml").generation, **overrides})


def sampling(max_new_tokens: int = 8, **overrides) -> Sampling:
    """conf/config.yaml's `sample` settings (its max_new_tokens comes from the env: tests pick theirs)."""
    s = OmegaConf.load(CONF / "config.yaml").sample
    settings = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, **overrides}
    return Sampling(max_new_tokens=max_new_tokens, **settings)


def make_policy(model, processor, *, max_new_tokens: int = 8, seed: int = 0, progress: bool = False,
                **generation_overrides) -> Policy:
    """A Policy as a run builds it, with test-sized settings."""
    return Policy(model, processor, generation(**generation_overrides), sampling(max_new_tokens), seed, progress)
