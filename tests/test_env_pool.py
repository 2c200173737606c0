"""EnvPool in real headless Chromium: a phase's rollouts reuse the same browsers, which end when the pool closes;
the teacher plays on several browsers at once with the same trajectories as on one; the loop starts each
phase's browsers once and none is alive while it trains."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir

from envs import EnvSplit
from envs.browser import MARKER
from envs.miniwob import MiniWoBEnv
from helpers import PROMPTS, make_policy
from reflection.evaluate import EvalConfig, evaluate
from reflection.rollout import EnvPool, Play, rollout, teacher_rollout

ROOT = Path(__file__).resolve().parents[1]


def our_browsers() -> set[int]:
    """Live processes of every browser this test process started (each carries our pid in its marker)."""
    found = set()
    for p in psutil.process_iter(["environ", "status"]):
        try:
            if ((p.info["environ"] or {}).get(MARKER, "").startswith(f"{os.getpid()}-")
                    and p.info["status"] != psutil.STATUS_ZOMBIE):
                found.add(p.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture()
def launches(monkeypatch) -> list[str]:
    """Every browser start (MiniWoBEnv._launch), by task."""
    started: list[str] = []
    real = MiniWoBEnv._launch

    def counting(self, task: str) -> None:
        started.append(task)
        real(self, task)

    monkeypatch.setattr(MiniWoBEnv, "_launch", counting)
    return started


def web_split(tmp_path: Path, episodes: list[tuple[str, int]], num_envs: int, max_steps: int = 3) -> EnvSplit:
    return EnvSplit("miniwob", lambda: MiniWoBEnv(image_dir=tmp_path, max_steps=max_steps), episodes,
                    num_envs=num_envs, max_steps=max_steps, multi_step=True, groups={}, stats={})


def test_rollouts_given_a_pool_reuse_its_browsers_until_it_closes(tmp_path, tiny, launches):
    policy = make_policy(*tiny, batch_size=8, max_new_tokens=24)
    split = web_split(tmp_path, [("click-test", 0), ("click-button", 1), ("click-test", 2)], num_envs=2)
    pool = EnvPool(split)
    first = rollout(policy, PROMPTS, split, Play(greedy=True), pool=pool)
    pids = [env.browser_pids for env in pool.envs]
    assert len(pids) == 2 and all(pids)  # both browsers stay up after the rollout
    second = rollout(policy, PROMPTS, split, Play(n=2), pool=pool)
    assert [env.browser_pids for env in pool.envs] == pids  # the same processes served the second rollout
    assert pool.made == 2 and len(launches) == 2
    assert len(first) == 3 and len(second) == 6 and all(t.steps for t in first + second)
    pool.close()
    assert pool.envs == [] and not our_browsers()


def test_reused_browsers_play_an_episode_as_fresh_ones_do(tmp_path):
    """The observations of an episode do not depend on what its browser played before."""
    split = web_split(tmp_path, [("click-checkboxes", 3), ("enter-text", 4), ("click-checkboxes", 3)], num_envs=1)
    with EnvPool(split) as pool:
        reused = teacher_rollout(split, pool=pool)
        again = teacher_rollout(split, pool=pool)
    fresh = teacher_rollout(web_split(tmp_path, [("click-checkboxes", 3)], num_envs=1))
    page = lambda t: [(s.observation.context, s.observation.images, s.output, s.reward) for s in t.steps]  # noqa: E731
    assert page(reused[0]) == page(reused[2]) == page(again[0]) == page(fresh[0])
    assert not our_browsers()


def test_teacher_plays_on_several_browsers_with_the_same_trajectories(tmp_path, launches):
    episodes = [(task, seed) for task in ("click-test", "enter-text", "login-user") for seed in range(3)]
    one = teacher_rollout(web_split(tmp_path, episodes, num_envs=1, max_steps=4))
    assert len(launches) == 1
    three = teacher_rollout(web_split(tmp_path, episodes, num_envs=3, max_steps=4))
    assert len(launches) == 1 + 3  # three browsers played the second rollout
    assert [t.episode_id for t in three] == [t.episode_id for t in one]  # episode order, whoever played it
    assert [[(s.observation, s.output, s.reward) for s in t.steps] for t in three] == \
           [[(s.observation, s.output, s.reward) for s in t.steps] for t in one]
    assert all(t.reward > 0 for t in three)
    assert not our_browsers()


def test_an_evaluation_starts_its_browsers_once_for_all_its_rollouts(tmp_path, tiny, launches):
    policy = make_policy(*tiny, batch_size=8, max_new_tokens=12)
    split = web_split(tmp_path, [("click-test", 100), ("click-test", 101)], num_envs=2, max_steps=2)
    _, _, rollouts = evaluate(policy, PROMPTS, split, EvalConfig([2], 6, False, 1))
    assert set(rollouts) == {"greedy", "majority@2", "select@2"}
    assert len(launches) == 2  # greedy, majority@2 and select@2 played on the same two browsers (was 6 starts)
    assert not our_browsers()


def test_the_loop_starts_browsers_once_per_phase_and_none_is_alive_while_it_trains(tmp_path, launches, monkeypatch):
    import reflection.loop as loop

    alive_in_training: list[set[int]] = []
    real_train = loop.train

    def train(*args, **kwargs):
        alive_in_training.append(our_browsers())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop, "train", train)
    overrides = [f"run_dir={tmp_path / 'web'}", "model=tiny", "env=miniwob", "env.max_new_tokens=12", "iterations=1",
                 "env.tasks=[click-test,enter-text]", "env.train_episodes_per_task=1", "env.test_episodes_per_task=1",
                 "env.max_steps=2", "env.num_envs=2", "eval.ns=[2]", "warmup.teacher_examples=2",
                 "train.batch_size=4", "sample.n=2", "eval.select_max_new_tokens=6"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    loop.selftrain(cfg)
    # teacher 2 + eval 0 (greedy) 2 + samples 2 + eval 1 (greedy, maj@2, select@2) 2; without a pool: 12
    assert len(launches) == 8
    assert alive_in_training == [set(), set()]  # warm-up and iteration 1 trained with every browser closed
    assert not our_browsers()
