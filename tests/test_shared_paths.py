"""Paths shared between threads, processes and runs: the cache, run directories, browsers that fail to start.

These are the first-run conditions of a new user: an empty cache, several browsers starting at once, two runs
started together."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from envs.files import RunDirInUse, RunLock, atomic_write, cache_dir

ROOT = Path(__file__).resolve().parents[1]
CHROME = "/usr/bin/chromium"


def fresh_env(cache: Path) -> dict[str, str]:
    """The environment of a process on a machine whose cache is empty."""
    env = {k: v for k, v in os.environ.items() if k != "R3V_CACHE"}
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("R3V_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "r3v"
    monkeypatch.setenv("R3V_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_32_threads_write_the_chromium_wrapper_into_an_empty_cache(monkeypatch, tmp_path):
    from envs.browser import chrome_wrapper

    monkeypatch.delenv("R3V_CACHE", raising=False)
    for round_ in range(25):
        cache = tmp_path / f"round{round_}"
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
        barrier = threading.Barrier(32)
        paths, errors = [], []

        def write() -> None:
            barrier.wait()
            try:
                paths.append(chrome_wrapper(CHROME))
            except Exception as e:  # noqa: BLE001 (the test reports every failure)
                errors.append(e)

        threads = [threading.Thread(target=write) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(paths)) == 1
        wrapper = Path(paths[0])
        assert os.access(wrapper, os.X_OK)
        assert wrapper.read_text().startswith(f'#!/bin/sh\nexec "{CHROME}" ')
        assert sorted(p.name for p in (cache / "r3v").iterdir()) == [wrapper.name]  # no temporary file left


def test_atomic_write_keeps_the_last_complete_file_under_concurrent_writers(tmp_path):
    target = tmp_path / "shared.txt"
    payloads = [str(i) * 100_000 for i in range(10)]
    threads = [threading.Thread(target=atomic_write, args=(target, p)) for p in payloads * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in payloads
    assert list(tmp_path.iterdir()) == [target]


def test_two_processes_build_the_offline_default_into_an_empty_cache_at_once(tmp_path):
    """Both succeed, the conversion runs once, and the result loads."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from omegaconf import OmegaConf\n"
            "from agent.models import load_backbone\n"
            "cfg = OmegaConf.load('conf/model/smolvlm_offline.yaml'); cfg.dtype = 'fp32'\n"
            "model, processor = load_backbone(cfg)\n"
            "print('loaded', sum(p.numel() for p in model.parameters()))\n")
    env = fresh_env(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    loaded = [line for out in outs for line in out.splitlines() if line.startswith("loaded")]
    assert len(loaded) == 2 and loaded[0] == loaded[1]
    assert sum(out.count("converting SmolLM2") for out in outs) == 1
    built = tmp_path / "cache" / "r3v"
    assert sorted(p.name for p in built.iterdir()) == ["smolvlm_offline", "smolvlm_offline.lock"]


def test_a_run_directory_has_one_live_owner(tmp_path):
    lock = RunLock(tmp_path)
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    code = "import sys; from envs.files import RunLock; RunLock(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode != 0
    assert f"in use by another run (pid {os.getpid()})" in other.stderr
    lock.release()
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT).returncode == 0


def test_taking_over_a_run_directory_removes_a_killed_writers_temp_files(tmp_path):
    code = ("import sys, os; from envs.files import RunLock, atomic_writer\n"
            "RunLock(sys.argv[1])\n"
            "with atomic_writer(os.path.join(sys.argv[1], 'iter_0', 'samples.jsonl')) as f:\n"
            "    f.write('half'); f.flush(); os._exit(9)  # killed mid-write")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT)
    left = list(tmp_path.rglob(".*.tmp"))
    assert [p.name.startswith(".samples.jsonl.") for p in left] == [True]
    (tmp_path / "iter_0" / "kept.jsonl").write_text("{}\n")
    lock = RunLock(tmp_path)
    assert lock.removed_temp_files == 1 and not list(tmp_path.rglob(".*.tmp"))
    assert (tmp_path / "iter_0" / "kept.jsonl").exists()
    lock.release()


def test_a_killed_owner_leaves_no_lock_behind(tmp_path):
    code = "import sys, time; from envs.files import RunLock; l = RunLock(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirInUse, match=f"pid {holder.pid}"):
        RunLock(tmp_path)
    holder.kill()
    holder.wait()
    RunLock(tmp_path).release()  # a resumed run takes it over at once


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "experiments/run.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_runs_start_together_on_a_fresh_machine_and_a_third_on_a_live_run_dir_is_refused(tmp_path):
    env = fresh_env(tmp_path / "cache")
    web_dir, qa_dir = tmp_path / "web", tmp_path / "qa"
    web = _run(["env=miniwob", "model=tiny", "env.tasks=[click-test]", "env.train_episodes_per_task=2",
                "env.test_episodes_per_task=16", "env.num_envs=16", "iterations=0", "eval.ns=[]",
                f"run_dir={web_dir}"], env)
    qa = _run(["env=synth_table", "model=tiny", "iterations=1", "env.n_train=16", "env.n_test=8",
               f"run_dir={qa_dir}"], env)
    deadline = time.monotonic() + 120
    while not (web_dir / "config.yaml").exists():  # the first run owns its run_dir
        assert web.poll() is None and time.monotonic() < deadline, "the MiniWoB run ended before taking its run_dir"
        time.sleep(0.2)
    third = subprocess.run([sys.executable, "experiments/run.py", "env=miniwob", "model=tiny",
                            "env.tasks=[click-test]", f"run_dir={web_dir}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert web.poll() is None, "the first run must still be alive for this check"
    assert third.returncode != 0
    assert f"is in use by another run (pid {web.pid})" in third.stderr
    outs = [p.communicate(timeout=900)[0] for p in (web, qa)]
    assert [web.returncode, qa.returncode] == [0, 0], [o[-3000:] for o in outs]
    for run_dir in (web_dir, qa_dir):
        metrics = (run_dir / "metrics.jsonl").read_text()
        assert '"metric": "test@1"' in metrics
    assert (tmp_path / "cache" / "r3v").is_dir()  # the browsers' wrapper went into the empty cache


def test_a_browser_that_will_not_start_fails_its_episodes_not_the_rollout(monkeypatch, tiny, tmp_path):
    """Evaluation with a Chromium that exits at once: the browser is restarted, then each episode is recorded as
    failed with its cause, and the rollout returns normally."""
    from helpers import PROMPTS, make_policy
    from envs import EnvSplit
    from envs.miniwob import MiniWoBEnv
    from reflection.rollout import Play, rollout

    monkeypatch.setenv("MINIWOB_CHROME_BINARY", "/bin/false")
    monkeypatch.setenv("MINIWOB_CHROMEDRIVER", "/usr/bin/chromedriver")
    model, processor = tiny
    episodes = [("click-test", 100_000), ("click-test", 100_001), ("focus-text", 100_000)]
    split = EnvSplit("miniwob", lambda: MiniWoBEnv(tmp_path, tasks=["click-test", "focus-text"], split="test"), episodes,
                     num_envs=2, max_steps=3, multi_step=True, groups={}, stats={})
    trajs = rollout(make_policy(model, processor, max_new_tokens=48), PROMPTS, split, Play(greedy=True))
    assert [(t.task_id, t.seed) for t in trajs] == episodes
    for t in trajs:
        assert t.steps == [] and t.reward == 0.0 and t.label == "negative"
        assert t.error.startswith("MiniWoB++ browser failed twice on reset: SessionNotCreatedException")
