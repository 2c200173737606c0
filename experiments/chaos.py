"""Fault injection: does a run survive SIGKILLs at random moments and browser faults, losing nothing?

    python experiments/chaos.py                  # 20 kills of a model=tiny synth_table run + the web part
    python experiments/chaos.py --quick          # 3 kills, 1 web kill, 2 browser faults (tests/test_chaos.py)

QA part: a small `model=tiny` config (env=synth_table, 2 iterations) runs once unkilled (the reference), then
again under `--kills` SIGKILLs, resumed after each until it finishes. A kill lands at a random moment after the run
has started work (any stage: teacher data, training, evaluation, sampling) or, for one kill in three, the moment
a checkpoint write is in flight (an atomic write's temporary file or `adapter.tmp` exists). The killed run is then
compared with the reference:
- the pool and every record file: each sample id (episode id + sample index) once, none missing;
- metrics: the same keys, the same number of rows per stage; values that differ (CPU kernels are not bit-identical
  from run to run) are listed with by how much; measured figures (seconds, memory) are not compared;
- temporary files left in the run directory.

Web part: env=miniwob with the tiny model, killed `--web-kills` times and resumed; then leaked browser processes
(processes carrying the browser marker of any of the killed runs) are counted. Browser faults: scripted-teacher
episodes in one MiniWoBEnv, with `--browser-faults` faults injected mid-episode, alternately a killed Chromium
(its main process, SIGKILL) and a hung page (its renderers, SIGSTOP); restarts, failed episodes and leaked
processes are counted. Only processes this script started are ever signalled.

Prints the summary and writes it as JSON (`--out`/chaos.json). Exit status 1 when a sample is lost or
duplicated, a metric row is missing or a browser process leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.browser import MARKER  # noqa: E402

QA_CONFIG = ["env=synth_table", "model=tiny", "iterations=2", "env.n_train=16", "env.n_test=8", "sample.n=2",
             "eval.ns=[1,2]", "warmup.teacher_examples=4", "train.batch_size=4", "env.max_new_tokens=16",
             "eval.select_max_new_tokens=6"]
WEB_CONFIG = ["env=miniwob", "model=tiny", "iterations=1", "env.tasks=[click-test,click-button]",
              "env.train_episodes_per_task=2", "env.test_episodes_per_task=2", "env.num_envs=2", "env.max_steps=2",
              "sample.n=2", "eval.ns=[]", "warmup.teacher_examples=4", "train.batch_size=4", "env.max_new_tokens=16",
              "env.call_timeout=10"]
MEASURED = ("seconds", "rss", "pss", "memory", "peak", "gpu")  # metric names holding measured cost, not results
FAULT_TASKS = ["click-test", "click-button", "enter-text", "login-user", "click-checkboxes", "focus-text"]


def command(run_dir: Path, config: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "run.py"), *config, f"run_dir={run_dir}"]


def in_flight_write(run_dir: Path) -> bool:
    """Whether a checkpoint write is under way: an atomic write's temporary file or a half-saved adapter."""
    return any(run_dir.glob("**/.*.tmp")) or any(run_dir.glob("iter_*/adapter.tmp"))


def started_work(run_dir: Path, log_size: int) -> bool:
    """Whether the run's log has grown since `log_size` (the run has finished starting up)."""
    log = run_dir / "run.log"
    return log.exists() and log.stat().st_size > log_size


def stage_order(reference: Path) -> list[tuple[str, str, float]]:
    """The reference run's stages in the order they committed: (iter_K, stage, seconds it took, from the commit
    before it; the first from the log's first line)."""
    files = sorted(reference.glob("iter_*/metrics_*.jsonl"), key=lambda f: f.stat().st_mtime)
    first = (reference / "run.log").read_text().splitlines()[0][1:24]
    t = time.mktime(time.strptime(first[:19], "%Y-%m-%d %H:%M:%S")) + int(first[20:23]) / 1000
    out = []
    for f in files:
        out.append((f.parent.name, f.stem.removeprefix("metrics_"), max(0.01, f.stat().st_mtime - t)))
        t = f.stat().st_mtime
    return out


def running_stage(run_dir: Path, order: list[tuple[str, str]]) -> str:
    """The first stage of `order` not yet committed in `run_dir`: what a kill now interrupts."""
    pending = [f"{k} {stage}" for k, stage, *_ in order if not (run_dir / k / f"metrics_{stage}.jsonl").exists()]
    return pending[0] if pending else "finishing"


def order_index(stage: str, order: list[tuple[str, str]]) -> int:
    names = [f"{k} {st}" for k, st, *_ in order]
    return names.index(stage) if stage in names else len(names)


def kill_targets(kills: int, order: list[tuple[str, str, float]], rng: random.Random) -> list[tuple[str, float]]:
    """`kills` moments drawn uniformly over the reference run's work, in order: (stage, seconds into it). Drawn
    on the whole timeline, the kills spread over every stage by its duration; resumes reach them in turn."""
    total = sum(d for _, _, d in order)
    out = []
    for t in sorted(rng.uniform(0, total) for _ in range(kills)):
        for k, stage, d in order:
            if t <= d:
                out.append((f"{k} {stage}", t))
                break
            t -= d
        else:
            out.append((f"{order[-1][0]} {order[-1][1]}", 0.0))
    return out


def run_under_kills(run_dir: Path, config: list[str], kills: int, work_seconds: float, rng: random.Random,
                    timeout: float, order: list[tuple[str, str, float]] | None = None) -> dict[str, Any]:
    """Run `config` in `run_dir`, SIGKILLing it `kills` times at random moments, resuming until it finishes.
    With the reference's stages `order`, the kill moments are drawn over its whole timeline (`kill_targets`), so
    they spread over every stage; without, each kill comes at a random moment of the first `work_seconds`."""
    done, attempts, pids, moments = False, 0, [], Counter()
    targets = kill_targets(kills, order, rng) if order else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while not done:
        attempts += 1
        if attempts > kills + 20:
            raise RuntimeError(f"{run_dir}: the run did not finish after {attempts - 1} attempts")
        log = run_dir / "run.log"
        log_size = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(command(run_dir, config), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        pids.append(proc.pid)
        killed = False
        if sum(moments.values()) < kills:
            on_write = rng.random() < 1 / 3
            target, delay = targets[sum(moments.values())] if targets else (None, rng.uniform(0, work_seconds))
            deadline = time.monotonic() + timeout
            start = None
            while proc.poll() is None and time.monotonic() < deadline:
                if start is None and started_work(run_dir, log_size):
                    now = running_stage(run_dir, order) if target else None
                    if target is None or now == target:
                        start = time.monotonic()  # the target stage is running: the kill comes `delay` s into it
                    elif order_index(now, order) > order_index(target, order):
                        start, delay = time.monotonic(), 0.0  # already past it (it committed between polls): now
                writing = on_write and in_flight_write(run_dir)
                # a write that is never caught in flight (tiny files take microseconds) falls back to the timed kill
                if start is not None and (writing or time.monotonic() - start >= delay):
                    stage = running_stage(run_dir, order or [])
                    proc.send_signal(signal.SIGKILL)  # our own child, by its pid
                    proc.wait()
                    killed = True
                    moments[f"{stage} (checkpoint write)" if writing else stage] += 1
                    break
                time.sleep(0.005 if on_write else 0.02)
        if not killed:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"{run_dir}: the run failed (exit {proc.returncode}):\n{err[-3000:]}")
            done = True
    return {"kills": sum(moments.values()), "resumes": attempts - 1, "kill_moments": dict(moments), "pids": pids}


def sample_ids(run_dir: Path) -> Counter:
    """Every record's id in every record file of the run: (file, episode id, sample index), counted."""
    ids: Counter = Counter()
    for f in sorted(run_dir.glob("iter_*/**/*.jsonl")):
        if f.name.startswith("metrics"):
            continue
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                ids[(str(f.relative_to(run_dir)), r.get("episode_id", r.get("id")), r.get("sample"))] += 1
    return ids


def metric_rows(run_dir: Path) -> dict[tuple, list[float]]:
    rows: dict[tuple, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = tuple(sorted((k, str(v)) for k, v in r.items() if k != "value"))
        rows.setdefault(key, []).append(r["value"])
    return rows


def compare(reference: Path, killed: Path) -> dict[str, Any]:
    """Pool, records and metrics of the killed run against the reference run."""
    ref_ids, got_ids = sample_ids(reference), sample_ids(killed)
    pool = lambda ids: {k: v for k, v in ids.items() if k[0].endswith("samples.jsonl")}  # noqa: E731
    ref_rows, got_rows = metric_rows(reference), metric_rows(killed)
    diffs = []
    for key, values in ref_rows.items():
        metric = dict(key)["metric"]
        if key in got_rows and not any(m in metric for m in MEASURED) and got_rows[key] != values:
            diffs.append({"row": dict(key), "reference": values, "killed": got_rows[key],
                          "abs_diff": max(abs(a - b) for a, b in zip(values, got_rows[key]))})
    stages = lambda d: Counter((f.parent.name, f.name) for f in d.glob("iter_*/metrics_*.jsonl")  # noqa: E731
                               for _ in f.read_text().splitlines())
    return {
        "samples": sum(pool(ref_ids).values()),
        "samples_lost": sum(1 for k in pool(ref_ids) if k not in got_ids),
        "samples_duplicated": sum(max(0, v - ref_ids.get(k, 1)) for k, v in pool(got_ids).items()),
        "records": sum(ref_ids.values()),
        "records_lost": sum(1 for k in ref_ids if k not in got_ids),
        "records_duplicated": sum(max(0, v - ref_ids.get(k, 1)) for k, v in got_ids.items()),
        "records_extra": sum(1 for k in got_ids if k not in ref_ids),
        "metric_rows": sum(len(v) for v in ref_rows.values()),
        "metric_rows_missing": sum(len(v) for k, v in ref_rows.items() if k not in got_rows),
        "metric_rows_extra": sum(len(v) for k, v in got_rows.items() if k not in ref_rows),
        "rows_per_stage_equal": stages(reference) == stages(killed),
        "values_differing": len(diffs),
        "max_abs_diff": max((d["abs_diff"] for d in diffs), default=0.0),
        "differing": sorted(diffs, key=lambda d: -d["abs_diff"])[:10],
        "temp_files_left": len(list(killed.glob("**/.*.tmp"))) + len(list(killed.glob("iter_*/adapter.tmp"))),
    }


def leaked_browsers(owner_pids: list[int]) -> list[int]:
    """Live processes carrying the browser marker of a run we started (its owner pid is one of ours)."""
    owners = {str(p) for p in owner_pids}
    return [p.pid for p in psutil.process_iter(["environ", "status"])
            if (p.info["environ"] or {}).get(MARKER, "-").split("-")[0] in owners
            and p.info["status"] != psutil.STATUS_ZOMBIE]


def browser_faults(n: int, image_dir: Path, rng: random.Random, call_timeout: float = 3.0) -> dict[str, Any]:
    """Scripted-teacher episodes with `n` faults injected mid-episode: a SIGKILLed Chromium main process, or
    SIGSTOPped renderers (a hung page). Counts restarts, failed episodes and leaked processes."""
    from envs.episode import EnvFailure
    from envs.miniwob import MiniWoBEnv

    env = MiniWoBEnv(image_dir=image_dir, call_timeout=call_timeout, max_steps=8)
    launches = 0
    launch = env._launch

    def counted(task: str) -> None:
        nonlocal launches
        launches += 1
        launch(task)

    env._launch = counted  # counts browser starts: the first, then one per restart
    episodes, failed, solved, faults, kinds = 0, 0, 0, 0, Counter()
    touched: set[int] = set()
    seed = 0
    try:
        while faults < n or episodes < 2 * n:
            task = FAULT_TASKS[seed % len(FAULT_TASKS)]
            try:
                obs, _ = env.reset(seed=seed, options={"task_id": task})
            except EnvFailure:
                failed += 1
                episodes += 1
                seed += 1
                continue
            episodes += 1
            seed += 1
            inject = faults < n and rng.random() < 0.7
            reward, error = 0.0, None
            for step in range(env.max_steps):
                if inject and step == 0:
                    faults += 1
                    kind = "killed chromium" if faults % 2 else "hung page"
                    kinds[kind] += 1
                    for p in (psutil.Process(pid) for pid in env.browser_pids):
                        try:
                            cmd = " ".join(p.cmdline())
                        except psutil.Error:
                            continue
                        if kind == "killed chromium" and "chromium" in p.name() and "--type=" not in cmd:
                            p.send_signal(signal.SIGKILL)
                            touched.add(p.pid)
                        elif kind == "hung page" and "--type=renderer" in cmd:
                            p.send_signal(signal.SIGSTOP)
                            touched.add(p.pid)
                obs, reward, terminated, truncated, info = env.step(env.teacher())
                error = info.get("error")
                if terminated or truncated:
                    break
            failed += bool(error and error.startswith("browser crashed"))
            solved += reward > 0
    finally:
        env.close()
    time.sleep(0.5)
    left = [pid for pid in touched if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    return {"browser_faults": faults, "fault_kinds": dict(kinds), "episodes": episodes, "solved": solved,
            "failed_episodes": failed, "restarts": launches - 1,
            "leaked_browser_processes": len(left) + len(leaked_browsers([os.getpid()]))}


def work_seconds(run_dir: Path) -> float:
    """Seconds from the reference run's first log line to its last: the window a timed kill is drawn from."""
    stamps = [line[1:24] for line in (run_dir / "run.log").read_text().splitlines() if line.startswith("[")]
    parse = lambda s: time.mktime(time.strptime(s[:19], "%Y-%m-%d %H:%M:%S")) + int(s[20:23]) / 1000  # noqa: E731
    return max(1.0, parse(stamps[-1]) - parse(stamps[0]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs of the QA run")
    ap.add_argument("--web-kills", type=int, default=3, help="SIGKILLs of the MiniWoB run (0: skip it)")
    ap.add_argument("--browser-faults", type=int, default=8, help="browser faults injected mid-episode (0: skip)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--out", default="runs/chaos", help="folder for the runs and chaos.json (emptied first)")
    ap.add_argument("--quick", action="store_true", help="3 kills, 1 web kill, 2 browser faults")
    args = ap.parse_args()
    if args.quick:
        args.kills, args.web_kills, args.browser_faults = 3, 1, 2
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    timeout = 600.0
    summary: dict[str, Any] = {}

    t = time.monotonic()
    ref = run_under_kills(out / "qa-reference", QA_CONFIG, 0, 0, rng, timeout)
    chaos = run_under_kills(out / "qa-killed", QA_CONFIG, args.kills, work_seconds(out / "qa-reference"), rng, timeout,
                            stage_order(out / "qa-reference"))
    summary["qa"] = {**{k: v for k, v in chaos.items() if k != "pids"}, **compare(out / "qa-reference", out / "qa-killed"),
                     "seconds": round(time.monotonic() - t, 1)}
    del ref
    if args.web_kills:
        t = time.monotonic()
        web_ref = run_under_kills(out / "web-reference", WEB_CONFIG, 0, 0, rng, timeout)
        web = run_under_kills(out / "web-killed", WEB_CONFIG, args.web_kills, work_seconds(out / "web-reference"), rng,
                              timeout, stage_order(out / "web-reference"))
        summary["web"] = {**{k: v for k, v in web.items() if k != "pids"},
                          **compare(out / "web-reference", out / "web-killed"),
                          "leaked_browser_processes": len(leaked_browsers(web["pids"] + web_ref["pids"])),
                          "seconds": round(time.monotonic() - t, 1)}
    if args.browser_faults:
        t = time.monotonic()
        summary["browser"] = {**browser_faults(args.browser_faults, out / "faults-screens", rng),
                              "seconds": round(time.monotonic() - t, 1)}
    (out / "chaos.json").write_text(json.dumps(summary, indent=1) + "\n")

    qa, web, br = summary["qa"], summary.get("web"), summary.get("browser")
    leaked = (web or {}).get("leaked_browser_processes", 0) + (br or {}).get("leaked_browser_processes", 0)
    print(f"kills: {qa['kills']}")
    print(f"  at: {', '.join(f'{k} x{v}' for k, v in sorted(qa['kill_moments'].items()))}")
    print(f"resumes: {qa['resumes']}")
    print(f"samples lost: {qa['samples_lost']} of {qa['samples']}")
    print(f"samples duplicated: {qa['samples_duplicated']}")
    print(f"records lost / duplicated: {qa['records_lost']} / {qa['records_duplicated']} of {qa['records']}")
    print(f"metric rows missing: {qa['metric_rows_missing']} of {qa['metric_rows']} (extra {qa['metric_rows_extra']}; "
          f"rows per stage equal: {qa['rows_per_stage_equal']})")
    print(f"values differing from the unkilled run: {qa['values_differing']} (max abs diff {qa['max_abs_diff']:.3g}; "
          "measured seconds and memory not compared)")
    print(f"temp files left: {qa['temp_files_left']}")
    if web:
        print(f"web: {web['kills']} kills, {web['resumes']} resumes, samples lost {web['samples_lost']} of "
              f"{web['samples']}, duplicated {web['samples_duplicated']}, metric rows missing "
              f"{web['metric_rows_missing']} of {web['metric_rows']}, values differing {web['values_differing']}")
    if br:
        print(f"browser faults: {br['browser_faults']} ({', '.join(f'{k} {v}' for k, v in br['fault_kinds'].items())})"
              f" -> {br['restarts']} restarts, {br['failed_episodes']} failed episodes of {br['episodes']}")
    print(f"leaked browser processes: {leaked}")
    print(f"written: {out / 'chaos.json'}")
    bad = (qa["samples_lost"] or qa["samples_duplicated"] or qa["metric_rows_missing"] or qa["records_lost"]
           or qa["records_duplicated"] or leaked or (web and (web["samples_lost"] or web["samples_duplicated"]
                                                              or web["metric_rows_missing"])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
