"""A short R3V loop end to end with model=tiny, resume, and the command line's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from reflection.loop import selftrain

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "env.max_new_tokens=12", "iterations=1", "eval.ns=[1,2]", "warmup.teacher_examples=3",
        "train.batch_size=4", "sample.n=2", "eval.select_max_new_tokens=6"]
SMALL = [*TINY, "env.n_train=6", "env.n_test=4"]


def config(run_dir: Path, *overrides: str, base: list[str] = SMALL):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"run_dir={run_dir}", *base, *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_loop_writes_every_metric_and_resumes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = config(run_dir, "env=synth_table")
    selftrain(cfg)
    rows = metrics(run_dir)
    for row in rows:
        assert {"iteration", "split", "metric", "value", "env", "model", "method"} <= row.keys()
        assert (row["env"], row["model"], row["method"]) == ("synth_table", "tiny", "r3v")
    names = {(r["iteration"], r["split"], r["metric"]) for r in rows}
    assert (0, "test", "test@1") in names and (0, "test", "maj@2") not in names  # N-metrics: last iteration
    for k in (1,):
        for m in ("test@1", "maj@1", "maj@2", "select@1", "select@2", "pass@1", "pass@2"):
            assert (k, "test", m) in names
            value = next(r["value"] for r in rows if (r["iteration"], r["metric"]) == (k, m))
            assert 0.0 <= value <= 1.0
    for m in ("positives", "negatives"):
        assert (0, "train", m) in names
    for m in ("sft_examples", "refine_examples", "select_examples", "qa_examples", "teacher_examples"):
        assert (1, "train", m) in names
    value = {(r["iteration"], r["metric"]): r["value"] for r in rows}
    assert value[(0, "positives")] + value[(0, "negatives")] == 6 * 2  # N samples per training question
    assert value[(0, "qa_examples")] == 6 and value[(0, "teacher_examples")] == 3
    # the run directory holds everything: pool with relative image paths, adapters, eval records
    samples = [json.loads(line) for line in (run_dir / "iter_0" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and samples[0]["steps"][0]["observation"]["images"][0].startswith("data/")
    assert (run_dir / "iter_1" / "adapter" / "adapter_config.json").exists()
    assert len((run_dir / "iter_1" / "eval.jsonl").read_text().splitlines()) == 4

    # resume: a finished run does no work again (training would fail if it were attempted)
    before = (run_dir / "metrics.jsonl").read_text()
    monkeypatch.setattr("reflection.loop.train", lambda *a, **k: pytest.fail("retrained a finished stage"))
    monkeypatch.setattr("reflection.loop.rollout", lambda *a, **k: pytest.fail("resampled a finished stage"))
    selftrain(cfg)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_killed_run_resumes_from_the_last_finished_stage(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(run_dir, "env=synth_clevr")
    selftrain(config(run_dir, "env=synth_clevr", "iterations=0"))  # as if killed after iteration 0's eval
    (run_dir / "iter_1").mkdir()
    (run_dir / "iter_1" / "adapter.tmp").mkdir()  # a half-written adapter is ignored and redone
    first = (run_dir / "iter_0" / "metrics_eval.jsonl").read_text()
    selftrain(cfg)
    assert (run_dir / "iter_0" / "metrics_eval.jsonl").read_text() == first
    assert {r["iteration"] for r in metrics(run_dir)} == {0, 1}
    assert not (run_dir / "iter_1" / "adapter.tmp").exists()


def test_star_and_sft_methods(tmp_path):
    selftrain(config(tmp_path / "star", "env=synth_clevr", "method=star"))
    rows = metrics(tmp_path / "star")
    assert all(r["value"] == 0 for r in rows if r["metric"] in ("refine_examples", "select_examples"))
    selftrain(config(tmp_path / "sft", "env=synth_clevr", "method=sft"))
    assert {r["iteration"] for r in metrics(tmp_path / "sft")} == {0}  # warm-up only


def test_the_same_seed_trains_the_same_adapter_whatever_the_rng_state_after_loading(tmp_path, monkeypatch):
    """A backbone loaded from disk leaves torch's global RNG wherever it was; the LoRA initialisation must not
    depend on that, or two runs of one seed differ from the first step."""
    import torch

    import reflection.loop as loop

    load = loop.load_backbone
    draws = iter([1, 2])

    def load_then_move_the_rng(cfg):
        out = load(cfg)
        torch.manual_seed(next(draws))  # as if the process had done other work before
        return out

    monkeypatch.setattr(loop, "load_backbone", load_then_move_the_rng)
    for name in ("a", "b"):
        selftrain(config(tmp_path / name, "method=sft", "iterations=0"))
    a, b = ((tmp_path / name / "iter_0" / "adapter" / "adapter_model.safetensors").read_bytes() for name in "ab")
    assert a == b


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_runs_and_refuses_a_different_config_in_the_same_run_dir(tmp_path):
    args = [f"run_dir={tmp_path / 'r'}", *SMALL, "iterations=0", "eval.ns=[1]"]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "metrics.jsonl").exists() and (tmp_path / "r" / "config.yaml").exists()
    clash = run_cli(*args, "seed=1", cwd=tmp_path)
    assert clash.returncode != 0 and "different config" in clash.stderr


@pytest.mark.parametrize("args, message", [
    (["env=nope"], "Could not find 'env/nope'"),
    (["model=nope"], "Could not find 'model/nope'"),
    (["model=hub", "model.source=/no/such/model"], "does not exist"),
    (["mode=train"], "unknown mode"),
    (["mode=eval", "adapter=/no/such/adapter"], "is not a folder"),
])
def test_cli_errors_say_what_to_do(tmp_path, args, message):
    done = run_cli(f"run_dir={tmp_path / 'r'}", *args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
    assert "Traceback" not in done.stderr  # one clear line, not a stack trace


def test_short_miniwob_loop_in_real_chromium(tmp_path):
    """Teacher warm-up, sampling, training, per-step maj@N/select@N and per-task metrics on real browsers."""
    import psutil

    run_dir = tmp_path / "web"
    cfg = config(run_dir, "env=miniwob", "env.tasks=[click-test,enter-text]", "env.train_episodes_per_task=2",
                 "env.test_episodes_per_task=2", "env.max_steps=2", "env.num_envs=2", "eval.ns=[2]", "eval.pass_at_n=true",
                 "warmup.teacher_examples=2", base=TINY)
    selftrain(cfg)
    rows = metrics(run_dir)
    names = {(r["iteration"], r["metric"], r.get("task")) for r in rows}
    for task in (None, "click-test", "enter-text"):
        for m in ("test@1", "maj@2", "select@2", "pass@2"):
            assert (1, m, task) in names, (m, task)
        assert (0, "positives", task) in names
    assert all(r["env"] == "miniwob" for r in rows)
    teacher = [json.loads(line) for line in (run_dir / "iter_0" / "teacher.jsonl").read_text().splitlines()]
    assert all(t["reward"] > 0 for t in teacher)  # the scripted teacher solves its episodes
    assert max(len(t["steps"]) for t in teacher) == 2  # enter-text takes two steps: type, then submit
    samples = [json.loads(line) for line in (run_dir / "iter_0" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 2  # 2 tasks x 2 episodes x sample.n=2
    step = samples[0]["steps"][0]
    assert step["observation"]["context"] and step["observation"]["images"][0].endswith(".png")
    assert (run_dir / step["observation"]["images"][0]).exists()
    eval_records = [json.loads(line) for line in (run_dir / "iter_1" / "eval.jsonl").read_text().splitlines()]
    assert all(len(r["select"]["2"]["outputs"]) >= 1 for r in eval_records)
    from envs.browser import MARKER

    ours = [p for p in psutil.process_iter(["environ", "status"])
            if (p.info["environ"] or {}).get(MARKER, "").startswith(f"{os.getpid()}-")
            and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert ours == []  # every browser the run started has ended


def test_sigterm_ends_every_browser_of_a_miniwob_run(tmp_path):
    """`kill <run>` mid-rollout: the run exits non-zero and leaves no chromium or chromedriver behind."""
    import signal
    import time

    import psutil

    from envs.browser import MARKER

    args = [f"run_dir={tmp_path / 'web'}", *TINY, "env=miniwob", "env.tasks=[click-test]",
            "env.train_episodes_per_task=2", "env.test_episodes_per_task=2", "env.num_envs=2"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def browsers() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["environ", "status"]):
            try:
                if ((p.info["environ"] or {}).get(MARKER, "").startswith(f"{proc.pid}-")
                        and p.info["status"] != psutil.STATUS_ZOMBIE):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    deadline = time.monotonic() + 120
    while len(browsers()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert browsers(), "the run never started a browser"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    time.sleep(1)
    assert browsers() == []


def test_metrics_stream_to_tensorboard_when_asked(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    selftrain(config(run_dir, "env=synth_table", "iterations=0", "eval.ns=[1]", "log_with=tensorboard"))
    (logs,) = (run_dir / "logs").iterdir()
    events = EventAccumulator(str(logs))
    events.Reload()
    written = {(r["split"], r["metric"]): r["value"] for r in metrics(run_dir) if r["iteration"] == 0}
    assert {"test/test@1", "train/teacher_episodes", "train/qa_examples"} <= set(events.Tags()["scalars"])
    (point,) = events.Scalars("test/test@1")
    assert (point.step, point.value) == (0, pytest.approx(written[("test", "test@1")]))


def test_unknown_tracker_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="log_with='nope'"):
        selftrain(config(tmp_path / "run", "env=synth_table", "log_with=nope"))


@pytest.mark.parametrize("stage, output", [("data", "iter_0/teacher.jsonl"), ("train", "iter_1/adapter"),
                                           ("sample", "iter_0/samples.jsonl"), ("eval", "iter_1/eval.jsonl")])
def test_a_kill_between_a_stages_outputs_and_its_metrics_reruns_the_stage(tmp_path, stage, output):
    """A stage's metrics file is its commit marker: outputs without metric rows (a kill in between) are
    redone on resume, so the finished run has every metric row, as an unkilled run does."""
    run_dir = tmp_path / "run"
    cfg = config(run_dir, "env=synth_table")
    selftrain(cfg)
    complete = sorted((r["iteration"], r["split"], r["metric"]) for r in metrics(run_dir))
    k = 0 if stage in ("data", "sample") else 1
    marker = run_dir / f"iter_{k}" / f"metrics_{stage}.jsonl"
    assert (run_dir / output).exists() and marker.exists()
    marker.unlink()  # as if killed after the outputs were written, before the metrics
    selftrain(cfg)
    assert marker.exists()
    assert sorted((r["iteration"], r["split"], r["metric"]) for r in metrics(run_dir)) == complete


def test_every_stage_writes_its_seconds_and_peak_memory_under_its_own_key(tmp_path):
    run_dir = tmp_path / "run"
    selftrain(config(run_dir, "env=synth_table"))
    rows = [r for r in metrics(run_dir) if r["split"] == "run"]
    keys = [(r["iteration"], r["stage"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))  # the stage key keeps rows of different stages apart
    stages = {(k, s) for k, s, _ in keys}
    assert stages == {(0, "data"), (0, "train"), (0, "eval"), (0, "sample"), (1, "pairs"), (1, "train"), (1, "eval")}
    value = {key: r["value"] for key, r in zip(keys, rows)}
    for k, stage in stages:
        assert value[(k, stage, "stage_seconds")] >= 0 and value[(k, stage, "stage_peak_rss_mb")] > 100
        assert (k, stage, "stage_peak_children_pss_mb") in value
    assert value[(0, "train", "stage_seconds")] > value[(1, "pairs", "stage_seconds")]


def test_the_meter_resets_the_peak_between_stages():
    import mmap

    from reflection.meter import Meter

    meter = Meter()
    meter.enter("big")
    # 300 MiB of fresh pages, touched: a malloc'd block could reuse pages a long test session already holds
    block = mmap.mmap(-1, 300 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    block.close()
    big = meter.figures()["stage_peak_rss_mb"]
    meter.enter("small")
    small = meter.figures()["stage_peak_rss_mb"]
    assert meter.peak_resets, "/proc/self/clear_refs is not writable here"
    assert big - small > 250  # the second stage's peak is its own, not the first's
