"""Soak test: is a long MiniWoB rollout's footprint flat? Memory, processes, temp files and log size over time.

    python experiments/soak.py                         # 1,000 episodes of 6 tasks, then 1,000 of click-test alone
    python experiments/soak.py --episodes 300 --out runs/soak/soak.json

The scripted teacher plays (no model), in one MiniWoBEnv as a run makes it (conf/env/miniwob.yaml's
refresh_freq, call_timeout, max_steps). Every `--every` episodes it samples: the PSS of the browser's processes
(chromedriver + Chromium; PSS shares common pages fairly between processes), this process's RSS, the number of
browser processes, temp files and folders of ours in the temp dir, and the bytes the `envs` loggers wrote. The
trend is a least-squares slope of browser PSS per 1,000 episodes, over the samples after the first 10% (start-up
allocation is not growth). Two settings: the 6 tasks rotating (each task change reloads the page, and every page
reloads after refresh_freq episodes), and click-test alone with refresh_freq=0 (never reloaded: the worst case).
Writes a JSON with every sample and the summary, and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.browser import TMP_PREFIX  # noqa: E402
from envs.miniwob import MiniWoBEnv  # noqa: E402
from reflection.meter import pss_mb  # noqa: E402

TASKS = ["click-test", "click-button", "enter-text", "login-user", "click-checkboxes", "focus-text"]


def our_temp_entries() -> int:
    """Browser temp dirs of this process left in the temp dir (one per live browser is expected)."""
    return len(list(Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{os.getpid()}-*")))


def slope_per_1000(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def soak(tasks: list[str], episodes: int, every: int, refresh_freq: int, image_dir: Path) -> dict[str, Any]:
    """Play `episodes` teacher episodes over `tasks` in turn, sampling the footprint every `every` episodes."""
    conf = OmegaConf.load(ROOT / "conf" / "env" / "miniwob.yaml")
    log_buffer = io.StringIO()
    handler = logging.StreamHandler(log_buffer)
    logging.getLogger("envs").addHandler(handler)  # what a run's log would receive from the env
    env = MiniWoBEnv(image_dir=image_dir, tasks=tasks, refresh_freq=refresh_freq, call_timeout=conf.call_timeout,
                     max_steps=conf.max_steps)
    samples, solved, t0 = [], 0, time.monotonic()
    try:
        for i in range(episodes):
            env.reset(seed=i, options={"task_id": tasks[i % len(tasks)]})
            for _ in range(env.max_steps):
                _, reward, terminated, truncated, _ = env.step(env.teacher())
                if terminated or truncated:
                    solved += reward > 0
                    break
            if (i + 1) % every == 0 or i + 1 == episodes:
                pids = env.browser_pids
                samples.append({"episode": i + 1, "seconds": round(time.monotonic() - t0, 1),
                                "browser_pss_mib": round(pss_mb(pids), 1),
                                "python_rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
                                "browser_processes": len(pids), "temp_dirs": our_temp_entries(),
                                "log_bytes": len(log_buffer.getvalue())})
    finally:
        env.close()
        logging.getLogger("envs").removeHandler(handler)
    time.sleep(0.5)
    tail = samples[max(1, len(samples) // 10):] or samples
    pss = [s["browser_pss_mib"] for s in samples]
    return {
        "tasks": tasks, "episodes": episodes, "refresh_freq": refresh_freq, "solved": solved,
        "seconds": round(time.monotonic() - t0, 1),
        "browser_pss_mib_min": min(pss), "browser_pss_mib_max": max(pss),
        "browser_pss_trend_mib_per_1000": round(slope_per_1000([s["episode"] for s in tail],
                                                               [s["browser_pss_mib"] for s in tail]), 1),
        "python_rss_mib_first_last": [samples[0]["python_rss_mib"], samples[-1]["python_rss_mib"]],
        "browser_processes_max": max(s["browser_processes"] for s in samples),
        "temp_dirs_max": max(s["temp_dirs"] for s in samples), "temp_dirs_after_close": our_temp_entries(),
        "processes_after_close": len(env.browser_pids),
        "log_bytes_per_episode": round(samples[-1]["log_bytes"] / episodes, 2),
        "screenshots": len(list(image_dir.glob("*.png"))),
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1000, help="episodes per setting")
    ap.add_argument("--every", type=int, default=25, help="sample the footprint every N episodes")
    ap.add_argument("--out", default="runs/soak/soak.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    refresh = int(OmegaConf.load(ROOT / "conf" / "env" / "miniwob.yaml").refresh_freq)
    results = []
    for tasks, refresh_freq in ((TASKS, refresh), (["click-test"], 0)):
        with tempfile.TemporaryDirectory(prefix="r3v-soak-") as screens:
            results.append(soak(tasks, args.episodes, args.every, refresh_freq, Path(screens)))
        out.write_text(json.dumps(results, indent=1) + "\n")  # after each setting: a long soak keeps what it measured
    print("| setting | episodes | solved | browser PSS (MiB) | trend (MiB / 1000 episodes) | browser processes | "
          "temp dirs after close | log bytes / episode | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        name = f"{len(r['tasks'])} tasks, reload every {r['refresh_freq']}" if r["refresh_freq"] else \
            f"{r['tasks'][0]}, never reloaded"
        print(f"| {name} | {r['episodes']} | {r['solved']} | {r['browser_pss_mib_min']:.0f}-{r['browser_pss_mib_max']:.0f} | "
              f"{r['browser_pss_trend_mib_per_1000']:+.1f} | {r['browser_processes_max']} | {r['temp_dirs_after_close']} | "
              f"{r['log_bytes_per_episode']:g} | {r['seconds']:.0f} |")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
