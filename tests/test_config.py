"""conf/ is the only home of a default: every config combination composes, and no code default that a config
key also sets disagrees with it."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from pathlib import Path
from typing import Any, Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("env", "model", "method")}
COMBINATIONS = list(itertools.product(*GROUPS.values()))


def compose_all(env: str, model: str, method: str, tmp_path: Path) -> DictConfig:
    overrides = [f"env={env}", f"model={model}", f"method={method}", f"run_dir={tmp_path}"]
    if model == "hub":
        overrides.append("model.source=/models/x")  # the one required key (???)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def code_defaults(target: Callable | type) -> dict[str, Any]:
    """Parameter -> default of a function, a class's __init__, or a dataclass."""
    if dataclasses.is_dataclass(target):
        return {f.name: f.default for f in dataclasses.fields(target) if f.default is not dataclasses.MISSING}
    fn = target.__init__ if inspect.isclass(target) else target
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def targets(cfg: DictConfig) -> list[tuple[str, Callable | type, DictConfig]]:
    """(name, code that a config block fills, that block)."""
    from agent.offline_models import build_tiny
    from agent.policy import Policy
    from envs.qa import QAEnv
    from reflection.evaluate import EvalConfig
    from reflection.train import TrainConfig

    out = [("TrainConfig", TrainConfig, cfg.train), ("EvalConfig", EvalConfig, cfg.eval),
           ("Policy", Policy, cfg.generation)]
    if cfg.env.kind == "miniwob":
        from envs.miniwob import MiniWoBEnv

        out.append(("MiniWoBEnv", MiniWoBEnv, cfg.env))
    else:
        out.append(("QAEnv", QAEnv, cfg.env))
    if cfg.model.source == "tiny":
        out.append(("build_tiny", build_tiny, cfg.model.tiny))
    return out


@pytest.mark.parametrize("env, model, method", COMBINATIONS)
def test_no_code_default_disagrees_with_the_config(env, model, method, tmp_path):
    cfg = compose_all(env, model, method, tmp_path)
    disagree = []
    for name, target, block in targets(cfg):
        for key, default in code_defaults(target).items():
            if key in block and block[key] != default:
                disagree.append(f"{name}({key}={default!r}) but the config says {block[key]!r}")
    assert disagree == []


def test_config_dataclasses_take_every_value_from_the_config():
    """Records filled from a config block have no defaults of their own to drift."""
    from reflection.evaluate import EvalConfig
    from reflection.train import TrainConfig

    for cls in (TrainConfig, EvalConfig):
        assert code_defaults(cls) == {}, cls.__name__


def test_the_check_catches_a_drifted_default(tmp_path):
    """The comparison above can fail: a default that differs from the config is reported."""
    cfg = compose_all("synth_table", "tiny", "r3v", tmp_path)

    def drifted(lr: float = 2e-4, batch_size: int = cfg.train.batch_size):
        pass

    found = {k: v for k, v in code_defaults(drifted).items() if k in cfg.train and cfg.train[k] != v}
    assert found == {"lr": 2e-4}


@pytest.mark.parametrize("env", GROUPS["env"])
def test_self_select_is_trained_at_every_size_it_is_evaluated_at(env, tmp_path):
    cfg = compose_all(env, "tiny", "r3v", tmp_path)
    assert {n for n in cfg.eval.ns if n >= 2} <= set(cfg.method.select_sizes)


def test_installed_packages_satisfy_the_declared_pins():
    """The code reads transformers' (and peft's, accelerate's) internals: the ranges in pyproject.toml bound them,
    and this machine's versions fall inside."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    for name in ("transformers", "peft", "accelerate"):
        assert any(s.operator == "<" for s in reqs[name].specifier), f"{name} has no upper bound"
        assert reqs[name].specifier.contains(version(name)), f"{name} {version(name)} is outside {reqs[name].specifier}"
