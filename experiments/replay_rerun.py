"""Re-execution of a recorded MiniWoB++ episode in a fresh headless browser.

The recorded actions are played again with `MiniWoBEnv` on the same task, split and seed: each step's
`parsed` action (written back as `Action: <parsed>`), or its raw output when it was unparsable. Before each
step the new observation is compared with the record (everything but the screenshot files: text, DOM
context, last action, ...), and after it the reward, the parsed action, the error and whether the episode
ended. The first difference is the divergence; play goes on to the end of the record, so the report also says
whether the rewards came back. Screenshots are named by content, so an identical screen has
the recorded file name; a different one is reported but is no divergence (a blinking caret differs).
Output in `replay/rerun/<episode>/`: the new screenshots, `episode.gif` (each step's screen, the element acted
on outlined) and `rerun.json`, which the report shows on the episode's page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from envs.episode import Step
from replay_data import action_target
from replay_records import Episode, ReplayError, RunRecords, find_episode, observation_dict

GIF_SCALE = 2  # MiniWoB screens are 160x210: too small to read at 1x


def slug(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", uid).strip("_")


def _diff(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    for key in recorded:
        if recorded[key] != now[key]:
            return f"{key} differs: recorded {recorded[key]!r}, now {now[key]!r}"
    return None


def _make_env(records: RunRecords, e: Episode, image_dir: Path):
    from envs.miniwob import MiniWoBEnv  # starts nothing until reset()

    env_cfg = records.cfg.get("env") or {}
    return MiniWoBEnv(image_dir=image_dir, tasks=[e.traj.task_id], split=e.split, episodes_per_task=1,
                      max_steps=records.max_steps, call_timeout=float(env_cfg.get("call_timeout", 20)),
                      max_dom_lines=int(env_cfg.get("max_dom_lines", 60)), name=str(env_cfg.get("name", "miniwob")))


def _action_text(step: Step) -> str:
    from envs.miniwob.actions import ACTION_PREFIX

    return ACTION_PREFIX + step.parsed if step.parsed is not None else step.output


def replay_steps(records: RunRecords, e: Episode, image_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Play every recorded action again; per step what happened, and every difference from the record in
    order (the first is the divergence). Play goes on past a difference, so one report tells whether the
    rewards came back too; it stops only when the new episode ends before the record does."""
    env = _make_env(records, e, image_dir)
    steps: list[dict[str, Any]] = []
    diffs: list[str] = []
    try:
        obs, _ = env.reset(seed=e.traj.seed, options={"task_id": e.traj.task_id})
        for i, rec in enumerate(e.traj.steps):
            if obs is None:
                diffs.append(f"step {i + 1}: the episode already ended, but the record goes on")
                break
            same = Path(obs.images[0]).name == Path(rec.observation.images[0]).name
            row = {"image": obs.images[0], "same_screen": same,
                   "action": _action_text(rec), "parsed": rec.parsed, "target": action_target(rec, True),
                   "recorded_reward": rec.reward}
            steps.append(row)
            diff = _diff(observation_dict(rec.observation), observation_dict(obs))
            if diff:
                diffs.append(f"step {i + 1}: the page {diff}")
            obs, reward, terminated, truncated, info = env.step(row["action"])
            row.update(reward=float(reward), done=terminated or truncated, error=info.get("error"))
            for what, was, now in (("reward", rec.reward, float(reward)),
                                   ("parsed action", rec.parsed, info.get("parsed")),
                                   ("error", rec.info.get("error"), info.get("error")),
                                   ("episode end", rec.done, terminated or truncated)):
                if (abs(was - now) > 1e-6) if what == "reward" else was != now:
                    diffs.append(f"step {i + 1}: {what} differs: recorded {was!r}, now {now!r}")
        return steps, diffs
    finally:
        env.close()


def _frame(image: Image.Image, lines: list[str]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("RGB", (image.width, image.height + 44), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, line in enumerate(lines):
        draw.text((4, image.height + 3 + 19 * j), line[:52], fill="black")
    return canvas, draw


def write_gif(steps: list[dict[str, Any]], path: Path, final: str) -> None:
    """An animated GIF: each step's screen with the element acted on outlined and the action written below,
    then a faded last screen with the result."""
    frames = []
    for i, s in enumerate(steps):
        img = Image.open(s["image"]).convert("RGB")
        img = img.resize((img.width * GIF_SCALE, img.height * GIF_SCALE), Image.NEAREST)
        action = s["parsed"] or "(unparsable output)"
        result = "not played" if "reward" not in s else \
            f"reward {s['reward']}" + (f", {s['error'][:30]}" if s.get("error") else "")
        canvas, draw = _frame(img, [f"step {i + 1}: {action}", result])
        target = s.get("target") or {}
        if target.get("box"):
            left, top, bw, bh = (v * GIF_SCALE for v in target["box"])
            draw.rectangle([left - 2, top - 2, left + bw + 2, top + bh + 2], outline=(255, 0, 170), width=3)
        elif target.get("xy"):
            x, y = (v * GIF_SCALE for v in target["xy"])
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(255, 0, 170))
        frames.append(canvas)
    if not frames:
        return
    faded = Image.blend(frames[-1].crop((0, 0, frames[-1].width, frames[-1].height - 44)),
                        Image.new("RGB", (frames[-1].width, frames[-1].height - 44), "white"), 0.7)
    frames.append(_frame(faded, [final, f"{len(steps)} step(s)"])[0])
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[1200] * (len(frames) - 1) + [2000], loop=0)


def rerun(records: RunRecords, spec: str, report_dir: Path) -> dict[str, Any]:
    """Re-execute episode `spec`; writes replay/rerun/<episode>/ and returns its result (see rerun.json)."""
    e = find_episode(records, spec)
    if not records.multi_step or (records.cfg.get("env") or {}).get("kind", "miniwob") != "miniwob":
        raise ReplayError(f"re-execution needs a MiniWoB++ run; {records.dir} is a "
                          f"{(records.cfg.get('env') or {}).get('name', '?')} run")
    if e.traj.error or not e.traj.steps:
        raise ReplayError(f"{e.uid} was never played ({e.traj.error or 'no steps'}): nothing to re-execute")
    out = report_dir / "rerun" / slug(e.uid)
    shutil.rmtree(out, ignore_errors=True)
    (out / "screens").mkdir(parents=True)
    steps, diffs = replay_steps(records, e, out / "screens")
    final_reward = steps[-1].get("reward") if steps else None
    if final_reward is None or abs(final_reward - e.traj.reward) > 1e-6:
        diffs.append(f"final reward differs: recorded {e.traj.reward}, now {final_reward}")
    divergence = diffs[0] if diffs else None
    rewards_ok = len(steps) == len(e.traj.steps) and final_reward is not None and \
        abs(final_reward - e.traj.reward) <= 1e-6 and \
        all(abs(s.get("reward", 0.0) - s["recorded_reward"]) <= 1e-6 for s in steps)
    same = sum(s["same_screen"] for s in steps)
    message = (f"diverged: {divergence}" + (f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else "")
               if divergence else f"reproduced {len(steps)} step(s)") + \
        f"; rewards {'reproduced' if rewards_ok else 'differ'} (final {final_reward}, recorded {e.traj.reward})" + \
        f"; {same}/{len(steps)} screens identical"
    write_gif(steps, out / "episode.gif", f"{'DIVERGED' if divergence else 'reproduced'}: reward {final_reward}")
    for s in steps:  # paths in rerun.json are relative to the report folder, like every path of the report
        s["image"] = Path(os.path.relpath(s["image"], report_dir)).as_posix()
    result = {"uid": e.uid, "ok": divergence is None, "divergence": divergence, "differences": diffs,
              "rewards_reproduced": rewards_ok, "message": message,
              "recorded_reward": e.traj.reward, "steps": steps, "gif": f"rerun/{slug(e.uid)}/episode.gif"}
    (out / "rerun.json").write_text(json.dumps(result, indent=1))
    return result


def load_reruns(report_dir: Path) -> dict[str, dict[str, Any]]:
    """Every re-execution recorded under replay/rerun/, by episode uid."""
    out = {}
    for f in sorted((report_dir / "rerun").glob("*/rerun.json")):
        try:
            r = json.loads(f.read_text())
            out[r["uid"]] = r
        except (json.JSONDecodeError, KeyError):
            continue  # a half-written or foreign file: the rerun can be made again
    return out
