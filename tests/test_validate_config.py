"""The config is checked before any work: every default passes, each bad value is named by its key."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from validate_config import problems  # noqa: E402

ENVS = sorted(p.stem for p in (ROOT / "conf" / "env").glob("*.yaml"))
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["run_dir=/tmp/x", *overrides])


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("model", MODELS)
def test_every_default_config_is_valid(env, model):
    extra = ["model.source=/models/x"] if model == "hub" else []
    assert problems(cfg_of(f"env={env}", f"model={model}", *extra)) == []


@pytest.mark.parametrize("override, message", [
    ("sample.n=0", "sample.n=0: must be an integer >= 1"),
    ("iterations=-1", "iterations=-1: must be an integer >= 0"),
    ("sample.top_p=1.5", "sample.top_p=1.5: must be a number in (0, 1]"),
    ("sample.temperature=0", "sample.temperature=0: must be a number > 0"),
    ("eval.ns=[0,3]", "eval.ns=[0, 3]: must be a list of integers >= 1"),
    ("train.lr=abc", "train.lr='abc': must be a number > 0"),
    ("train.batch_size=2.5", "train.batch_size=2.5: must be an integer >= 1"),
    ("generation.engine=vllm", "generation.engine='vllm': must be fast or hf"),
    ("method.select_sizes=[1]", "method.select_sizes=[1]: must be a list of integers >= 2"),
    ("env.n_train=0", "env.n_train=0: must be an integer >= 1"),
])
def test_a_bad_value_is_named_by_its_key(override, message):
    found = problems(cfg_of("env=synth_table", override))
    assert len(found) == 1 and found[0].startswith(message)


def test_web_task_keys_are_checked_for_miniwob():
    found = problems(cfg_of("env=miniwob", "env.max_steps=0", "env.tasks=[]"))
    assert [f.split(":")[0] for f in found] == ["env.max_steps=0", "env.tasks=[]"]


@pytest.mark.parametrize("override, key", [("sample.n=0", "sample.n=0"), ("iterations=-1", "iterations=-1")])
def test_the_command_refuses_before_any_work(tmp_path, override, key):
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "env=synth_table", override,
                           f"run_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and key in done.stderr
    assert time.monotonic() - start < 60  # ~7 s here (imports); the bound is loose for a busy machine
    assert not (tmp_path / "r" / "config.yaml").exists()  # nothing of the run was written
