"""MiniWoB++ in real headless Chromium: tasks, the teacher, failures, process lifetime (the grammar: test_actions)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

from envs import env_split
from envs.browser import MARKER
from envs.miniwob import DEFAULT_TASKS, TEST_SEED_OFFSET, MiniWoBEnv, action_line, parse_action

ROOT = Path(__file__).resolve().parents[1]
TEACHER_EPISODES = 20  # per task


def our_browser_pids() -> set[int]:
    """Live processes of every browser this test process started (each carries our pid in its marker)."""
    prefix = f"{os.getpid()}-"
    return {p.pid for p in psutil.process_iter(["environ", "status"])
            if (p.info["environ"] or {}).get(MARKER, "").startswith(prefix) and p.info["status"] != "zombie"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = MiniWoBEnv(image_dir=tmp_path_factory.mktemp("screens"), max_steps=6)
    yield e
    e.close()
    assert not e.browser_pids


def run_teacher(env: MiniWoBEnv, task: str, seed: int) -> float:
    env.reset(seed=seed, options={"task_id": task})
    for _ in range(env.max_steps):
        _, reward, terminated, truncated, _ = env.step(env.teacher())
        if terminated or truncated:
            return reward
    raise AssertionError("the episode outlived its step budget")


# ------------------------------------------------------------------ episodes and config

def test_env_split_is_lazy_and_splits_do_not_overlap(tmp_path):
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "env": OmegaConf.load(ROOT / "conf/env/miniwob.yaml")})
    train_split, test_split = env_split(cfg.env, "train"), env_split(cfg.env, "test")
    assert train_split.multi_step and train_split.groups["click-test"] == {"task": "click-test"} and train_split.max_steps == cfg.env.max_steps
    train, test = train_split.make(), test_split.make()
    assert not train.browser_pids  # no browser before the first reset
    assert train.image_dir == tmp_path / "screens"
    tr, te = train.episodes(), test.episodes()
    assert (tr, te) == (train_split.episodes, test_split.episodes)
    assert len(tr) == len(DEFAULT_TASKS) * cfg.env.train_episodes_per_task
    assert {t for t, _ in tr} == set(DEFAULT_TASKS)
    assert max(s for _, s in tr) < TEST_SEED_OFFSET <= min(s for _, s in te)
    assert all(type(s) is int for _, s in tr + te)
    train.close()
    test.close()


def test_screenshot_writers_of_the_same_screen_do_not_collide(tmp_path, monkeypatch):
    """The N samples of an episode save the same screen at once, from threads and processes: each write is
    atomic, so every writer gets the path of a whole PNG and no temporary file is left."""
    import threading

    import numpy as np
    from PIL import Image

    # Every writer must write (the "already saved" shortcut would hide the race), and one env serves several
    # threads: processes' envs may share an address, so the writer's id must not be what keeps files apart.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    one = MiniWoBEnv(image_dir=tmp_path)  # no browser: none is reset
    envs = [one] * 4 + [MiniWoBEnv(image_dir=tmp_path) for _ in range(4)]
    rng = np.random.default_rng(0)
    for _ in range(10):
        pixels = rng.integers(0, 256, (210, 160, 3), dtype=np.uint8)
        barrier, paths, errors = threading.Barrier(len(envs)), [], []

        def save(e: MiniWoBEnv) -> None:
            barrier.wait()
            try:
                paths.append(e._save_screenshot(pixels))
            except Exception as exc:  # noqa: BLE001  (reported below, with the others)
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(e,)) for e in envs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(paths)) == 1
        assert (np.asarray(Image.open(paths[0])) == pixels).all()
    assert len(list(tmp_path.iterdir())) == 10  # one PNG per screen, no temporary file left
    monkeypatch.undo()
    inode = os.stat(paths[0]).st_ino
    assert one._save_screenshot(pixels) == paths[0] and os.stat(paths[0]).st_ino == inode  # saved once: kept


# ------------------------------------------------------------------ real browser

def test_every_task_resets_and_steps(env):
    for task in DEFAULT_TASKS:
        obs, _ = env.reset(seed=1, options={"task_id": task})
        assert obs.text and obs.task_id == task and obs.seed == 1
        assert obs.answer_format.startswith("Action: <one of click(ref=N)")
        assert Path(obs.images[0]).is_file() and obs.images[0].endswith(".png")
        assert obs.context and all(line.startswith("[") for line in obs.context.splitlines())
        obs2, reward, terminated, truncated, info = env.step("Action: click_xy(150, 5)")  # on the utterance
        assert info["parsed"] == "click_xy(150, 5)" and "error" not in info
        assert not terminated and not truncated and reward == 0.0 and obs2.task_id == task


def test_dom_listing(env):
    obs, _ = env.reset(seed=3, options={"task_id": "login-user"})
    lines = obs.context.splitlines()
    assert lines[0].startswith('[6] label "Username" @(')
    assert lines[1].startswith('[7] input_text value="" @(')
    assert any(line.startswith('[11] button "Login"') for line in lines)
    obs, *_ = env.step('Action: type(ref=7, "ann")')
    assert '[7] input_text value="ann" focused @(' in obs.context


def test_same_episode_same_observation(env):
    """The N samples of an episode run in different browsers; their first observations must be identical."""
    other = MiniWoBEnv(image_dir=env.image_dir)
    try:
        for task in ("click-checkboxes", "login-user"):
            a, _ = env.reset(seed=5, options={"task_id": task})
            b, _ = other.reset(seed=5, options={"task_id": task})
            assert a == b
    finally:
        other.close()
    assert not other.browser_pids


def test_an_episode_does_not_inherit_the_last_ones_focus(env):
    """A browser reused across episodes shows each episode as a fresh one does: clicking the button of one
    click-test episode left it focused in the next one's DOM listing."""
    assert run_teacher(env, "click-test", 0) > 0  # clicks (and so focuses) the button
    reused, _ = env.reset(seed=1, options={"task_id": "click-test"})
    fresh_env = MiniWoBEnv(image_dir=env.image_dir)
    try:
        fresh, _ = fresh_env.reset(seed=1, options={"task_id": "click-test"})
    finally:
        fresh_env.close()
    assert "focused" not in reused.context and reused == fresh


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_teacher_solves_task(env, task):
    rewards = [run_teacher(env, task, seed) for seed in range(TEACHER_EPISODES)]
    rate = sum(r > 0 for r in rewards) / len(rewards)
    assert rate >= 0.95, f"teacher solved {rate:.0%} of {task}"


def test_teacher_actions_are_written_by_the_formatter(env):
    """Every action the teacher writes on real pages is the formatter's text of what the parser reads back."""
    seen = set()
    for task in DEFAULT_TASKS:
        for seed in (0, 1):
            env.reset(seed=seed, options={"task_id": task})
            for _ in range(env.max_steps):
                text = env.teacher()
                *_, line = text.splitlines()
                assert line == action_line(parse_action(text)), text
                seen.add(parse_action(text).kind)
                _, _, terminated, truncated, _ = env.step(text)
                if terminated or truncated:
                    break
    assert seen == {"click", "type"}


def test_invalid_actions_are_failed_steps(env):
    obs, _ = env.reset(seed=2, options={"task_id": "login-user"})
    for text, error in [("I am not sure.", "invalid action"), ("Action: click(ref=999)", "unknown ref 999"),
                        ("Action: click_xy(400, 20)", "outside the page")]:
        obs, reward, terminated, truncated, info = env.step(text)
        assert error in info["error"] and reward == 0.0 and not terminated and not truncated
    assert info["parsed"] == "click_xy(400, 20)" and obs.task_id == "login-user"
    for _ in range(2):  # the episode goes on: the teacher still finishes, on the 6th and last step
        assert not env.step(env.teacher())[2]
    _, reward, terminated, _, info = env.step(env.teacher())
    assert terminated and reward > 0 and info["raw_reward"] == reward


def test_step_budget_truncates(tmp_path):
    env = MiniWoBEnv(image_dir=tmp_path, max_steps=2)
    try:
        env.reset(seed=0, options={"task_id": "enter-text"})
        assert env.step('Action: press("a")')[3] is False
        obs, reward, terminated, truncated, _ = env.step('Action: press("b")')
        assert truncated and not terminated and reward == 0.0 and obs is not None
        with pytest.raises(RuntimeError):
            env.step("Action: done()")
    finally:
        env.close()


def test_observation_carries_the_last_action(env):
    """The prompt shows the action that led to the page (a filled field looks like an empty one to a small
    model); an invalid action leaves the observation as it was."""
    from helpers import PROMPTS

    obs, _ = env.reset(seed=4, options={"task_id": "enter-text"})
    assert obs.last_action is None and "Last action" not in PROMPTS.cot_prompt(obs)[0]["content"][-1]["text"]
    same, *_ = env.step("no action here")
    assert same == obs
    filled, *_ = env.step('Action: type(ref=5,"hello")')
    assert filled.last_action == 'type(ref=5, "hello")' and filled.page() != obs.page()
    assert 'Last action: type(ref=5, "hello")\n' in PROMPTS.cot_prompt(filled)[0]["content"][-1]["text"]
    again, *_ = env.step('Action: click(ref=5)')  # the page stays as it was; only the last action differs
    assert again.page() == filled.page() and again != filled


def test_type_replaces_text_and_done_ends(env):
    obs, _ = env.reset(seed=4, options={"task_id": "enter-text"})
    target = dict(env._fields)["target"]
    env.step('Action: type(ref=5, "wrong text")')
    obs, *_ = env.step(f'Action: type(ref=5, "{target}")')
    assert f'value="{target}"' in obs.context
    assert env.step("Action: click(ref=6)")[1] > 0
    env.reset(seed=4, options={"task_id": "enter-text"})
    obs, reward, terminated, _, info = env.step("Action: done()")
    assert obs is None and terminated and reward == 0.0 and info["parsed"] == "done()"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])  # crashed, then hung
def test_browser_failure_recovers(tmp_path, sig):
    env = MiniWoBEnv(image_dir=tmp_path, call_timeout=2.0)
    try:
        env.reset(seed=0, options={"task_id": "login-user"})
        pids = env.browser_pids
        assert len(pids) >= 2  # chromedriver + chromium
        for pid in pids:
            os.kill(pid, sig)
        t = time.time()
        obs, reward, terminated, _, info = env.step(env.teacher())
        assert time.time() - t < 15
        assert obs is None and terminated and reward == 0.0
        assert info["error"].startswith("browser crashed") and info["parsed"]
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
        assert run_teacher(env, "login-user", 1) > 0  # a new browser, working
        assert not env.browser_pids & pids
    finally:
        env.close()
    assert not env.browser_pids


def test_browsers_of_a_killed_run_are_reaped(tmp_path):
    """A run SIGKILLed mid-episode leaves its browser and its temp dir; the next run's first browser start
    (`reap_orphans`) ends the one and removes the other."""
    import json
    import subprocess
    import sys

    from envs.browser import reap_orphans

    script = (
        "import json, os, signal\n"
        "from envs.miniwob import MiniWoBEnv\n"
        f"env = MiniWoBEnv(image_dir={str(tmp_path)!r})\n"
        "env.reset(seed=0, options={'task_id': 'click-test'})\n"
        "print(json.dumps({'pids': sorted(env.browser_pids), 'tmp': env._procs.tmp}), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    left = json.loads(out.stdout.splitlines()[-1])
    alive = lambda: {p for p in left["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"}  # noqa: E731
    assert alive() and Path(left["tmp"]).is_dir()  # the kill left them behind
    assert reap_orphans() >= 1
    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not alive() and not Path(left["tmp"]).exists()


def test_no_browser_process_left(env):
    """Runs last: every browser the tests started is gone once its env is closed."""
    env.reset(seed=0, options={"task_id": "click-test"})
    assert env.browser_pids
    env.close()
    assert not env.browser_pids and not our_browser_pids()
    env.reset(seed=0, options={"task_id": "click-test"})  # reset after close starts a new browser
    assert env.browser_pids


def test_greedy_episode_ends_when_its_action_changes_nothing(tmp_path, tiny):
    """The random tiny model writes no valid action: the page stays as it was, so a greedy episode stops after
    that step instead of spending its whole step budget; sampled episodes do use the budget."""
    from helpers import PROMPTS, make_policy
    from envs import EnvSplit
    from reflection.rollout import Play, rollout

    policy = make_policy(*tiny, batch_size=8, max_new_tokens=48)
    split = EnvSplit("miniwob", lambda: MiniWoBEnv(image_dir=tmp_path, max_steps=4), [("click-test", 0)],
                     num_envs=1, max_steps=4, multi_step=True, groups={}, stats={})
    greedy = rollout(policy, PROMPTS, split, Play(greedy=True))
    assert len(greedy[0].steps) == 1 and greedy[0].steps[-1].info["stuck"] and greedy[0].reward <= 0
    sampled = rollout(policy, PROMPTS, split, Play(greedy=False))
    assert len(sampled[0].steps) == 4 and not any(s.info.get("stuck") for s in sampled[0].steps)
