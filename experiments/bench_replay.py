"""How fast replay is on a large run: a synthetic MiniWoB++-like run of 20,000 trajectories (made with the real
record dataclasses), the time `experiments/replay.py` takes to build its report, and how long the index and an
episode page take to render in headless Chromium. Prints a JSON of figures and writes it to --out.

    python experiments/bench_replay.py [--trajectories 20000] [--out bench_replay.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from omegaconf import OmegaConf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from envs.episode import Observation, Step, Trajectory  # noqa: E402
from reflection.pool import write_jsonl  # noqa: E402

TASKS = ("click-test", "click-button", "click-link", "focus-text", "enter-text", "click-checkboxes", "login-user",
         "click-dialog", "click-tab", "enter-password")
FORMAT = 'Action: <one of click(ref=N), type(ref=N, "text"), press("key"), click_xy(x, y)>'
ERRORS = ("invalid action: no line 'Action: <action>'", "unknown ref 42: no such element on the current page",
          "click_xy(400, 30) is outside the page (0..160, 0..210)")


def screens(run: Path, n: int, rng: random.Random) -> list[str]:
    """n distinct 160x210 screenshots, named by content as MiniWoBEnv names them."""
    (run / "screens").mkdir(parents=True)
    out = []
    for i in range(n):
        img = Image.new("RGB", (160, 210), "white")
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, 160, 50], fill=(255, 255, 0))
        d.text((4, 4), f"Synthetic task {i}", fill="black")
        d.rectangle([rng.randint(5, 80), rng.randint(60, 150), 150, 200], outline="black")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        name = f"screens/{TASKS[i % len(TASKS)]}-{hashlib.sha1(buf.getvalue()).hexdigest()[:16]}.png"
        (run / name).write_bytes(buf.getvalue())
        out.append(name)
    return out


def observation(task: str, seed: int, k: int, images: list[str], last: str | None) -> Observation:
    dom = "\n".join(f'[{r}] button "Option {r}" @({4 + r},{50 + 12 * r} 60x11)' for r in range(2, 2 + 6 + seed % 5))
    return Observation(text=f"Click the button named Option {3 + seed % 4}.",
                       images=[images[(seed * 7 + k) % len(images)]], context=dom, answer_format=FORMAT,
                       task_id=task, seed=seed, last_action=last)


def trajectory(task: str, seed: int, iteration: int, sample: int, eid: str, rng: random.Random, images: list[str],
               max_steps: int, solve: float) -> Trajectory:
    """A played episode: 1..max_steps steps, failed steps carrying the env's real error texts."""
    steps, last, success = [], None, rng.random() < solve
    n = rng.randint(1, max_steps) if success else rng.choice([1, 2, max_steps])
    for k in range(n):
        obs = observation(task, seed, k, images, last)
        final = k == n - 1
        kind = rng.random()
        if final and success:
            parsed, info = f"click(ref={3 + seed % 4})", {"raw_reward": 1.0}
        elif kind < 0.4:
            parsed, info = None, {"error": ERRORS[0]}
        elif kind < 0.55:
            parsed, info = "click(ref=42)", {"error": ERRORS[1]}
        elif kind < 0.65:
            parsed, info = "click_xy(400, 30)", {"error": ERRORS[2]}
        else:
            parsed, info = f"click(ref={2 + rng.randint(0, 5)})", {"raw_reward": 0.0}
        info = {"parsed": parsed, **info}
        reward = 1.0 if final and success else 0.0
        text = (f"The task asks to click Option {3 + seed % 4}. I look for it in the DOM listing and pick its ref. "
                f"Step {k + 1}.\nAction: {parsed or 'clik me'}")
        steps.append(Step(obs, text, parsed, reward, final and (success or n == max_steps), info))
        last = parsed if parsed and "error" not in info else last
    return Trajectory(eid, "miniwob", task, seed, steps, 1.0 if success else 0.0, iteration, "bench", sample)


def make_run(run: Path, total: int, seed: int = 0) -> int:
    """A run directory of `total` trajectories (teacher, samples at iterations 0 and 1, test rollouts at 0..2)."""
    rng = random.Random(seed)
    images = screens(run, 60, rng)
    # 10 tasks x E train episodes: teacher + 3 samples at 2 iterations = 70 E; x T test episodes: greedy,
    # majority@3, select@3 at 3 iterations = 90 T. E = 80, T = 160 gives 20,000.
    scale = total / 20_000
    e_train, e_test = max(1, round(8 * scale)), max(1, round(16 * scale))
    cfg = OmegaConf.load(HERE.parent / "conf" / "config.yaml")
    conf = {"prompts": OmegaConf.to_container(OmegaConf.load(HERE.parent / "conf" / "prompts" / "default.yaml")),
            "env": {"name": "miniwob", "kind": "miniwob", "tasks": list(TASKS), "max_steps": 6, "max_dom_lines": 60},
            "model": {"name": "bench"}, "method": {"name": "r3v", "self_train": True, "refine": True, "select": True,
                                                   "select_sizes": [3], "select_per_episode": 2},
            "seed": seed, "iterations": 2, "sample": OmegaConf.to_container(cfg.sample, resolve=False)}
    conf["sample"]["max_new_tokens"] = 48
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(conf)))
    count = 0

    def save(rel: str, trajs: list[Trajectory]) -> None:
        nonlocal count
        write_jsonl(run / rel, (t.to_dict() for t in trajs))
        count += len(trajs)

    train = [(t, s) for t in TASKS for s in range(e_train * 10)]
    test = [(t, 100_000 + s) for t in TASKS for s in range(e_test * 10)]
    save("iter_0/teacher.jsonl", [trajectory(t, s, 0, 0, f"{t}#{s}#teacher", rng, images, 6, 1.0) for t, s in train])
    for k in (0, 1):
        save(f"iter_{k}/samples.jsonl", [trajectory(t, s, k, j, f"{t}#{s}#{j}", rng, images, 6, 0.3 + 0.1 * k)
                                         for t, s in train for j in range(3)])
    rows = []
    tags = {"env": "miniwob", "model": "bench", "method": "r3v", "seed": seed}
    for k in (0, 1, 2):
        for name in ("greedy", "majority@3", "select@3"):
            trajs = [trajectory(t, s, k, 0, f"{t}#{s}#0", rng, images, 6, 0.35 + 0.05 * k) for t, s in test]
            save(f"iter_{k}/eval/{name}.jsonl", trajs)
            metric = {"greedy": "test@1", "majority@3": "maj@3", "select@3": "select@3"}[name]
            base = {"iteration": k, "split": "test", "metric": metric, **tags}
            rows.append({**base, "value": sum(t.reward > 0 for t in trajs) / len(trajs)})
            rows += [{**base, "value": rng.random(), "task": task} for task in TASKS]
        train = (("train_loss", 2.0 / (k + 1)), ("sft_examples", 100.0 * k), ("refine_examples", 80.0 * k),
                 ("select_examples", 120.0 * k))
        rows += [{"iteration": k, "split": "train", "metric": m, "value": v, **tags} for m, v in train]
    write_jsonl(run / "metrics.jsonl", rows)
    return count


def render_times(report: Path, repeats: int) -> dict[str, float]:
    """Median ms, over `repeats` fresh loads, until the index has rendered its first page of rows
    (window.__replayRendered, performance.now() from navigation start); and an episode page's render."""
    from replay_browser import chrome, console_errors, file_url, wait_ready

    index, rendered, dcl, episode, filt = [], [], [], [], []
    with chrome() as d:
        for _ in range(repeats):
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get(file_url(report / "index.html"))
            wait_ready(d, 60)
            index.append((time.perf_counter() - t0) * 1000)
            rendered.append(d.execute_script("return window.__replayRendered"))
            dcl.append(d.execute_script(
                "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
            filt.append(d.execute_script("const t = performance.now(); setFilter('label', 'positive'); "
                                         "return performance.now() - t;"))
        rows = d.find_element("id", "n-shown").text
        href = d.find_element("css selector", "#table tbody tr a").get_attribute("href")
        for _ in range(repeats):
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get(href)
            wait_ready(d, 60)
            episode.append((time.perf_counter() - t0) * 1000)
        errors = console_errors(d)
    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    return {"index_rendered_ms": med(rendered), "index_dom_content_loaded_ms": med(dcl),
            "index_load_wall_ms": med(index), "filter_update_ms": med(filt), "episode_page_wall_ms": med(episode),
            "rows_after_filter": rows, "console_errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trajectories", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench_replay.json"))
    ap.add_argument("--keep", type=Path, help="make the synthetic run here and keep it")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    run = (args.keep or Path(tmp.name)) / "bench-run"
    t0 = time.perf_counter()
    n = make_run(run, args.trajectories)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / "replay.py"), str(run), "--brief"], capture_output=True,
                          text=True)
    build = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"replay failed: {done.stderr[-2000:]}")
    report = run / "replay"
    files = [p for p in report.rglob("*") if p.is_file()]
    figures = {"trajectories": n, "make_synthetic_run_s": round(made, 1), "build_report_s": round(build, 1),
               "report_files": len(files), "report_mb": round(sum(p.stat().st_size for p in files) / 2**20, 1),
               "index_js_mb": round((report / "data" / "index.js").stat().st_size / 2**20, 2),
               **render_times(report, args.repeats)}
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
