"""experiments/replay.py: reports of short model=tiny runs, looked at in headless Chromium as a person would
(rows, images that load, filters, episode pages, comparisons, no JavaScript errors), re-execution of recorded
MiniWoB++ episodes, failure causes, schema versions, moved run directories."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from envs.episode import Observation, Step, Trajectory  # noqa: E402
from replay_browser import chrome, console_errors, file_url, wait_ready  # noqa: E402
from replay_causes import episode_cause  # noqa: E402
from replay_plots import group_of  # noqa: E402
from replay_records import load_run  # noqa: E402

TINY = ["model=tiny", "env.max_new_tokens=12", "iterations=1", "warmup.teacher_examples=3", "train.batch_size=4",
        "sample.n=2", "eval.select_max_new_tokens=6"]
WEB = ["env=miniwob", "env.tasks=[click-test,focus-text]", "env.train_episodes_per_task=2",
       "env.test_episodes_per_task=2", "env.max_steps=2", "env.num_envs=2", "eval.ns=[2]"]
QA = ["env=synth_table", "env.n_train=6", "env.n_test=4", "eval.ns=[1,2]"]


def make_run(run_dir: Path, *overrides: str) -> Path:
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), f"run_dir={run_dir}", *TINY,
                           *overrides], cwd=run_dir.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "replay.py"), *map(str, args)],
                          capture_output=True, text=True)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_records(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="session")
def web_run(tmp_path_factory) -> Path:
    """A two-task MiniWoB++ run (the teacher solves both tasks; the tiny model solves nothing)."""
    return make_run(tmp_path_factory.mktemp("web") / "run", *WEB)


@pytest.fixture(scope="session")
def qa_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("qa") / "run", *QA)


@pytest.fixture(scope="session")
def web_pairs(web_run, tmp_path_factory) -> Path:
    """A copy of the web run whose pool also holds the teacher's solutions as samples: the tiny model never
    succeeds, so this is how its train episodes get a positive to contrast with their negatives."""
    run = tmp_path_factory.mktemp("pairs") / "run"
    shutil.copytree(web_run, run, ignore=shutil.ignore_patterns("replay", "adapter"))
    pool = records(run / "iter_0" / "samples.jsonl")
    for t in records(run / "iter_0" / "teacher.jsonl"):
        t.update(episode_id=f"{t['task_id']}#{t['seed']}#9", sample=9, model="tiny")
        pool.append(t)
    write_records(run / "iter_0" / "samples.jsonl", pool)
    return run


@pytest.fixture(scope="session")
def driver():
    with chrome() as d:
        yield d


def open_page(driver, path: Path, fragment: str = "") -> None:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(file_url(path, fragment))
    wait_ready(driver)


def loaded(driver, img) -> bool:
    driver.execute_script("arguments[0].scrollIntoView()", img)
    for _ in range(50):
        if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
            return True
        time.sleep(0.1)
    return False


def visible_rows(driver) -> list:
    return driver.find_elements("css selector", "#table tbody tr")


def episode_fragment(uid: str) -> str:
    return "id=" + urllib.parse.quote(uid, safe="")


# --- the command line and the report's files


def test_cli_prints_the_summary_and_writes_the_report(web_run):
    done = replay(web_run)
    assert done.returncode == 0, done.stderr
    index = web_run / "replay" / "index.html"
    assert done.stdout.strip().splitlines()[-1] == str(index) and index.exists()
    out = done.stdout
    assert "iteration 0" in out and "iteration 1" in out
    assert "train/teacher" in out and "test/greedy" in out and "test/select@2" in out
    teacher_line = next(line for line in out.splitlines() if "train/teacher" in line and "all tasks" in line)
    assert "4/4" in teacher_line and "100.0%" in teacher_line  # the teacher solves every train episode
    assert any(c in out for c in ("unparsable output", "unknown ref", "step budget spent", "stuck"))
    for name in ("test_at_1.png", "at_n.png", "pool.png", "train_loss.png"):
        assert (web_run / "replay" / "plots" / name).stat().st_size > 1000
    html = index.read_text()
    assert "http://" not in html and "https://" not in html  # no network: everything ships with the report


def test_every_recorded_episode_is_a_row(web_run, driver):
    replay(web_run)
    n = sum(len(records(f)) for f in [*web_run.glob("iter_*/teacher.jsonl"), *web_run.glob("iter_*/samples.jsonl"),
                                      *web_run.glob("iter_*/eval/*.jsonl")])
    open_page(driver, web_run / "replay" / "index.html")
    assert driver.find_element("id", "n-shown").text == f"{n} of {n} episodes"
    shown = len(visible_rows(driver))
    assert shown == min(n, 100)
    thumb = driver.find_element("css selector", "#table img.thumb")
    assert loaded(driver, thumb)
    for img in driver.find_elements("css selector", ".plots img"):
        assert loaded(driver, img), img.get_attribute("src")
    assert console_errors(driver) == []


def test_a_filter_changes_the_visible_rows(web_run, driver):
    from selenium.webdriver.support.ui import Select

    replay(web_run)
    open_page(driver, web_run / "replay" / "index.html")
    before = len(visible_rows(driver))
    Select(driver.find_element("id", "f-label")).select_by_value("positive")
    rows = visible_rows(driver)
    assert 0 < len(rows) < before
    assert all("positive" in r.text for r in rows)
    assert driver.find_element("id", "n-shown").text.startswith(f"{len(rows)} of ")
    # the other filters' counts follow: every positive is a teacher episode here
    options = [o.text for o in Select(driver.find_element("id", "f-g")).options]
    assert f"train/teacher ({len(rows)})" in options and "test/greedy (0)" in options
    Select(driver.find_element("id", "f-label")).select_by_value("")
    Select(driver.find_element("id", "f-task")).select_by_value("focus-text")
    assert all("focus-text" in r.text for r in visible_rows(driver))
    driver.find_element("css selector", "#table th:nth-child(9)").click()  # sort by reward
    assert console_errors(driver) == []


def test_episode_page_shows_every_step_with_the_element_acted_on(web_run, driver):
    replay(web_run)
    uid = "iter_0/teacher.jsonl:focus-text#1#teacher"
    open_page(driver, web_run / "replay" / "episode.html", episode_fragment(uid))
    steps = driver.find_elements("css selector", "section.step")
    teacher = {t["episode_id"]: t for t in records(web_run / "iter_0" / "teacher.jsonl")}
    assert len(steps) == len(teacher["focus-text#1#teacher"]["steps"]) >= 1
    assert "Goal: Focus into the textbox." in steps[0].text
    assert "Action: click(ref=" in steps[0].text and "Reward: 1" in steps[0].text
    assert loaded(driver, steps[0].find_element("css selector", ".shot img"))
    box = steps[0].find_element("css selector", ".target")
    assert box.size["width"] > 0 and box.size["height"] > 0
    assert steps[0].find_element("css selector", "details.dom summary").text == "DOM text"
    # a sampled episode of two failed steps: the goal on every step, keys move between steps and episodes
    uid = "iter_0/samples.jsonl:click-test#0#0"
    open_page(driver, web_run / "replay" / "episode.html", episode_fragment(uid))
    steps = driver.find_elements("css selector", "section.step")
    assert len(steps) == 2 and all("Goal: Click the button." in s.text for s in steps)
    body = driver.find_element("tag name", "body")
    body.send_keys("j")
    assert "current" in steps[1].get_attribute("class") and "current" not in steps[0].get_attribute("class")
    body.send_keys("n")
    wait_ready(driver)
    assert urllib.parse.unquote(driver.current_url).endswith("click-test#0#1")
    assert console_errors(driver) == []


def test_qa_report_shows_questions_images_and_select_outputs(qa_run, driver):
    done = replay(qa_run)
    assert done.returncode == 0, done.stderr
    run = load_run(qa_run)
    assert {e.rollout for e in run.episodes} >= {"teacher", "samples", "greedy", "select@2"}
    n_eval = len(records(qa_run / "iter_1" / "eval.jsonl"))
    assert sum(e.rollout == "select@2" for e in run.episodes) == n_eval  # from eval.jsonl: no record file of its own
    open_page(driver, qa_run / "replay" / "index.html")
    assert driver.find_element("id", "n-shown").text == f"{len(run.episodes)} of {len(run.episodes)} episodes"
    uid = next(e.uid for e in run.episodes if e.rollout == "greedy")
    open_page(driver, qa_run / "replay" / "episode.html", episode_fragment(uid))
    step = driver.find_element("css selector", "section.step")
    assert "Question: " in step.text and "Gold: " in step.text
    assert loaded(driver, step.find_element("css selector", ".shot img"))
    assert console_errors(driver) == []


# --- comparisons


def test_train_episode_pairs_and_examples_come_from_reflection_examples(web_pairs):
    from agent.prompts import Prompts
    from reflection.examples import pool_examples
    from reflection.pool import load_pool
    from replay_training import contrasts, message_text

    run = load_run(web_pairs)
    recs = contrasts(run)
    assert recs and all(r["k"] == 1 for r in recs)
    # where the teacher and the samples saw the same first page, they chose differently at step 1
    assert [r["decision"] for r in recs if r["decision"]] and all(r["decision"] in ([0, 0], None) for r in recs)
    cfg = run.cfg
    built = pool_examples(load_pool(web_pairs, 0), Prompts(**cfg["prompts"]), random.Random(cfg["seed"] + 1), True,
                          True, tuple(cfg["method"]["select_sizes"]), cfg["method"]["select_per_episode"])
    assert [r["refine"]["target"] for r in recs if r["refine"]] == [s.target for s in built["refine"]]
    assert [(s["prompt"], s["target"]) for r in recs for s in r["select"]] == \
        [(message_text(s.messages), s.target) for s in built["select"]]
    for r in recs:
        for s in r["select"]:
            assert [c["ok"] for c in s["candidates"]].count(True) >= 1
            assert all(c["output"] in s["prompt"] for c in s["candidates"])


def test_compare_pages_side_by_side(web_pairs, driver):
    other = web_pairs.parent / "other"
    if not other.exists():
        shutil.copytree(web_pairs, other, ignore=shutil.ignore_patterns("replay"))
        greedy = records(other / "iter_1" / "eval" / "greedy.jsonl")
        greedy[0].update(reward=1.0, label="positive")  # the other run "solved" one episode
        write_records(other / "iter_1" / "eval" / "greedy.jsonl", greedy)
    done = replay(web_pairs, "--against", other)
    assert done.returncode == 0, done.stderr
    page = web_pairs / "replay" / "compare.html"
    open_page(driver, page, "view=train&task=click-test&seed=0")
    assert len(driver.find_elements("css selector", ".side")) == 2
    marked = driver.find_elements("css selector", "section.step.decision")
    assert len(marked) == 2 and all("decision step" in m.text for m in marked)
    assert "Self-refine example" in driver.find_element("id", "refine").text
    example = driver.find_element("css selector", ".select-example")
    assert len(example.find_elements("css selector", "ol.cands li")) == 3
    open_page(driver, page, "view=iter&task=focus-text&seed=100001&ro=greedy")
    columns = driver.find_elements("css selector", ".side")
    assert [c.find_element("tag name", "h3").text for c in columns] == ["iteration 0", "iteration 1"]
    assert all(c.find_elements("css selector", "section.step") for c in columns)
    open_page(driver, page)
    assert "vs other on shared test episodes" in driver.find_element("id", "against").text
    assert "other only" in driver.find_element("tag name", "body").text
    open_page(driver, page, "view=against&task=click-test&seed=100000&ro=greedy")
    assert len(driver.find_elements("css selector", ".side")) == 2
    assert console_errors(driver) == []


# --- re-execution


def test_rerun_reproduces_the_teacher_episodes(web_run, driver):
    ids = [f"iter_0/teacher.jsonl:{t['episode_id']}" for t in records(web_run / "iter_0" / "teacher.jsonl")]
    done = replay(web_run, *[a for i in ids for a in ("--rerun", i)])
    results = [json.loads(f.read_text()) for f in sorted((web_run / "replay" / "rerun").glob("*teacher*/rerun.json"))]
    assert sorted(r["uid"] for r in results) == sorted(ids)
    # the teacher solves them again
    assert all(r["rewards_reproduced"] and r["recorded_reward"] == 1.0 for r in results)
    # A page that differs is reported (exit 1), never a reward: a MiniWoB++ browser carries the focus of one
    # episode's click into the next episode of the same task, which a fresh browser does not.
    assert done.returncode == (0 if all(r["ok"] for r in results) else 1), done.stdout + done.stderr
    assert all(": the page " in d for r in results for d in r["differences"])
    assert any(r["ok"] for r in results)
    from PIL import Image

    for r in results:
        assert f"rerun {r['uid']}: {'reproduced' if r['ok'] else 'diverged'}" in done.stdout
        assert Image.open(web_run / "replay" / r["gif"]).n_frames >= 2
    ok = next(r["uid"] for r in results if r["ok"])
    open_page(driver, web_run / "replay" / "episode.html", episode_fragment(ok))
    box = driver.find_element("css selector", "section.rerun.ok")
    assert "reproduced" in box.text and loaded(driver, box.find_element("tag name", "img"))
    assert console_errors(driver) == []


def test_rerun_reports_a_tampered_action(web_run, tmp_path):
    run = tmp_path / "tampered"
    shutil.copytree(web_run, run, ignore=shutil.ignore_patterns("replay", "adapter"))
    teacher = records(run / "iter_0" / "teacher.jsonl")
    teacher[0]["steps"][0]["parsed"] = "click(ref=999)"  # no such element: the step fails, reward 0
    write_records(run / "iter_0" / "teacher.jsonl", teacher)
    done = replay(run, "--rerun", teacher[0]["episode_id"], "--brief")
    assert done.returncode == 1
    assert "diverged: step 1: reward differs: recorded 1.0, now 0.0" in done.stdout and "rewards differ" in done.stdout
    result = json.loads(next((run / "replay" / "rerun").glob("*/rerun.json")).read_text())
    assert result["ok"] is False and (run / "replay" / result["gif"]).exists()


def test_rerun_needs_an_unambiguous_episode(web_run):
    done = replay(web_run, "--rerun", "click-test#100000#0")
    assert done.returncode == 2 and "ambiguous" in done.stderr and "Traceback" not in done.stderr


# --- records


def test_unknown_schema_version_is_one_clear_line(qa_run, tmp_path):
    run = tmp_path / "future"
    shutil.copytree(qa_run, run, ignore=shutil.ignore_patterns("replay", "adapter"))
    rows = records(run / "iter_0" / "samples.jsonl")
    rows[2]["schema"] = 99
    write_records(run / "iter_0" / "samples.jsonl", rows)
    done = replay(run)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "iter_0/samples.jsonl line 3" in done.stderr and "schema version 99" in done.stderr


def test_a_moved_run_still_replays(web_run, tmp_path, driver):
    moved = tmp_path / "elsewhere" / "moved-run"
    shutil.copytree(web_run, moved, ignore=shutil.ignore_patterns("replay", "adapter"))
    assert replay(moved).returncode == 0
    data = (moved / "replay" / "data" / "index.js").read_text()
    assert str(web_run) not in data and str(moved) not in data and '"../screens/' in data
    open_page(driver, moved / "replay" / "episode.html", episode_fragment("iter_0/teacher.jsonl:click-test#0#teacher"))
    assert loaded(driver, driver.find_element("css selector", ".shot img"))


def _traj(steps: list[Step], reward: float = 0.0, error: str | None = None) -> Trajectory:
    return Trajectory("t#0#0", "miniwob", "t", 0, steps, reward, error=error)


def _step(parsed: str | None, done: bool = False, reward: float = 0.0, **info) -> Step:
    return Step(Observation(text="goal"), "out", parsed, reward, done, info)


def test_failure_causes_follow_the_documented_rules():
    bad = {"error": "invalid action: no line 'Action: <action>'"}
    off = "click_xy(900, 5) is outside the page (0..160, 0..210)"
    assert episode_cause(_traj([_step("click(ref=1)", True, 1.0)], 1.0), True, 3) == ""
    assert episode_cause(_traj([], error="MiniWoB++ browser failed twice"), True, 3) == "env failed to start"
    unparsable = [_step(None, **bad), _step(None, **bad), _step(None, True, **bad)]
    assert episode_cause(_traj(unparsable), True, 3) == "unparsable output"
    unknown = _step("click(ref=9)", error="unknown ref 9: no such element")
    assert episode_cause(_traj([unknown]), True, 3) == "unknown ref"
    assert episode_cause(_traj([_step("click_xy(900, 5)", error=off)]), True, 3) == "off-page click"
    assert episode_cause(_traj([_step("click(ref=2)", stuck=True)]), True, 3) == "stuck"
    budget = [_step("click(ref=2)"), _step("click(ref=3)"), _step("click(ref=2)", True)]
    assert episode_cause(_traj(budget), True, 3) == "step budget spent"
    assert episode_cause(_traj([_step("click(ref=5)", True, -1.0)], -1.0), True, 3) == "wrong answer"
    assert episode_cause(_traj([_step("done()", True)]), True, 3) == "gave up"
    assert episode_cause(_traj([_step(None, True)]), False, 1) == "unparsable output"
    assert episode_cause(_traj([_step("7", True)]), False, 1) == "wrong answer"


def test_group_rows_are_the_rows_with_an_extra_key():
    base = {"iteration": 0, "split": "test", "metric": "test@1", "value": 0.5, "env": "e", "model": "m",
            "method": "r3v", "seed": 0}
    assert group_of(base) is None and group_of({**base, "task": "click-test"}) == "task=click-test"
