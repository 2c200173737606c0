"""MiniWoB++ in real headless Chromium: tasks, the action grammar, the teacher, failures, process lifetime."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

from envs import env_factory
from envs.browser import MARKER
from envs.miniwob import DEFAULT_TASKS, TEST_SEED_OFFSET, ActionError, MiniWoBEnv, parse_action

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


# ------------------------------------------------------------------ the action grammar (pure)

@pytest.mark.parametrize("text, canonical", [
    ("Action: click(ref=12)", "click(ref=12)"),
    ("action:click(12)", "click(ref=12)"),
    ("ACTION: Click( ref = 12 )", "click(ref=12)"),
    ('Action: click(ref="7")', "click(ref=7)"),
    ("It is element 3.\nAction: click(ref=3)\nOn second thought:\nAction: click(ref=7).", "click(ref=7)"),
    ("**Action:** `click(ref=4)`", "click(ref=4)"),
    ('Action: type(ref=5, "hello")', 'type(ref=5, "hello")'),
    ("Action: type(ref=5, 'it\\'s')", 'type(ref=5, "it\'s")'),
    ('Action: type(ref=5, "say \\"hi\\"")', 'type(ref=5, "say \\"hi\\"")'),
    ('Action: type(5, "a, b (c)")', 'type(ref=5, "a, b (c)")'),
    ('Action: type(text="x", ref=5)', 'type(ref=5, "x")'),
    ("Action: type(ref=5, hello)", 'type(ref=5, "hello")'),
    ('Action: type(ref=5, "")', 'type(ref=5, "")'),
    ('Action: type("hello")', 'type("hello")'),
    ('Action: press("Enter")', 'press("Enter")'),
    ("Action: press('return')", 'press("Enter")'),
    ('Action: press("tab")', 'press("Tab")'),
    ('Action: press("up")', 'press("ArrowUp")'),
    ('Action: press("<Backspace>")', 'press("Backspace")'),
    ('Action: press(" ")', 'press("Space")'),
    ("Action: press(a)", 'press("a")'),
    ("Action: press('ctrl+a')", 'press("ctrl+a")'),
    ('Action: press("Ctrl+C")', 'press("ctrl+c")'),
    ("Action: click_xy(80, 120)", "click_xy(80, 120)"),
    ("Action: click_xy(80.5,120)", "click_xy(80.5, 120)"),
    ("Action: click_xy(x=1, y=2)", "click_xy(1, 2)"),
    ("Action: done()", "done()"),
    ("Action: DONE()", "done()"),
])
def test_parse_valid(text, canonical):
    action = parse_action(text)
    assert str(action) == canonical
    assert str(parse_action(f"Action: {canonical}")) == canonical  # the canonical form parses to itself


@pytest.mark.parametrize("text", [
    "", "click(ref=1)", "The action is click(ref=1)", "Action: ", "Action: clik(ref=1)", "Action: click()",
    "Action: click(ref=a)", "Action: click(ref=1.5)", "Action: click(ref=1, 2)", "Action: click(ref=1",
    'Action: type(ref=5, "abc)', "Action: type(ref=1, ref=2)", "Action: type()", 'Action: type(ref=1, "😀")',
    'Action: press("F13")', 'Action: press("ctrl+z")', 'Action: press("hyper+a")', "Action: press()",
    "Action: click_xy(1)", "Action: click_xy(a, b)", "Action: click_xy(1, 2, 3)", "Action: done(1)",
])
def test_parse_invalid(text):
    with pytest.raises(ActionError):
        parse_action(text)


# ------------------------------------------------------------------ episodes and config

def test_env_factory_is_lazy_and_splits_do_not_overlap(tmp_path):
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "env": OmegaConf.load(ROOT / "conf/env/miniwob.yaml")})
    train, test = env_factory(cfg.env, "train")(), env_factory(cfg.env, "test")()
    assert not train.browser_pids  # no browser before the first reset
    assert train.image_dir == tmp_path / "screens"
    tr, te = train.episodes(), test.episodes()
    assert len(tr) == len(DEFAULT_TASKS) * cfg.env.train_episodes_per_task
    assert {t for t, _ in tr} == set(DEFAULT_TASKS)
    assert max(s for _, s in tr) < TEST_SEED_OFFSET <= min(s for _, s in te)
    assert all(type(s) is int for _, s in tr + te)
    train.close()
    test.close()


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


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_teacher_solves_task(env, task):
    rewards = [run_teacher(env, task, seed) for seed in range(TEACHER_EPISODES)]
    rate = sum(r > 0 for r in rewards) / len(rewards)
    assert rate >= 0.95, f"teacher solved {rate:.0%} of {task}"


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
    from agent.prompts import cot_prompt

    obs, _ = env.reset(seed=4, options={"task_id": "enter-text"})
    assert obs.last_action is None and "Last action" not in cot_prompt(obs)[0]["content"][-1]["text"]
    same, *_ = env.step("no action here")
    assert same == obs
    filled, *_ = env.step('Action: type(ref=5,"hello")')
    assert filled.last_action == 'type(ref=5, "hello")' and filled.page() != obs.page()
    assert 'Last action: type(ref=5, "hello")\n' in cot_prompt(filled)[0]["content"][-1]["text"]
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
    from agent.policy import Policy
    from reflection.rollout import rollout

    policy = Policy(*tiny, batch_size=8, progress=False)
    make = lambda: MiniWoBEnv(image_dir=tmp_path, max_steps=4)  # noqa: E731
    greedy = rollout(policy, make, [("click-test", 0)], greedy=True, num_envs=1, max_steps=4)
    assert len(greedy[0].steps) == 1 and greedy[0].steps[-1].info["stuck"] and greedy[0].reward <= 0
    sampled = rollout(policy, make, [("click-test", 0)], greedy=False, num_envs=1, max_steps=4)
    assert len(sampled[0].steps) == 4 and not any(s.info.get("stuck") for s in sampled[0].steps)
