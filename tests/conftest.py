"""Shared fixtures: a tiny real Qwen2-VL built from a config, and small generated datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the random tiny Qwen2-VL; shared, so tests must not train it in place."""
    from agent.offline_models import build_tiny

    model, processor = build_tiny()
    model.eval()
    return model, processor


@pytest.fixture(scope="session")
def clevr_dir(tmp_path_factory) -> Path:
    from envs.synthetic import build_dataset

    return build_dataset("synth_clevr", tmp_path_factory.mktemp("clevr"), n_train=24, n_test=8, seed=0)


@pytest.fixture()
def clevr_env(clevr_dir):
    from envs.qa import QAEnv, read_items

    return QAEnv("synth_clevr", read_items(clevr_dir / "train.jsonl"), clevr_dir, text_context=False, breakdown=())
