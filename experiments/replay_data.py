"""The report's data: the episode index and the episodes themselves as JavaScript files loaded by <script src>.

Pages opened from file:// may not fetch() local files, but they may load scripts. So:
- `data/index.js` sets `window.REPLAY_INDEX`: run facts and one compact row per episode (the index table).
- `data/ep/NNNN.js` call `replayChunk(N, [...])` with CHUNK episodes in full, loaded on demand by the pages,
  so opening the index never parses the steps of 20,000 episodes.
- `data/compare.js` sets `window.REPLAY_COMPARE` (iteration/against/training comparisons),
  `data/reruns.js` sets `window.REPLAY_RERUNS` (re-execution results by episode uid).
Image paths are written relative to the report folder (`../screens/x.png`), so a moved run still shows them.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from envs.episode import Step
from replay_records import Episode, RunRecords

CHUNK = 200  # episodes per data/ep file: small enough to load at once, few enough files for 20,000 episodes
COLUMNS = ("id", "run", "split", "it", "ro", "task", "seed", "sample", "label", "reward", "steps", "cause", "thumb")
_BOX = re.compile(r"^\[(-?\d+)\] .*@\((-?\d+),(-?\d+) (\d+)x(\d+)\)\s*$")


def image_url(path: str, run_dir: Path, report_dir: Path) -> str:
    """A record's image path (relative to its run dir, or absolute) as a URL relative to the report folder."""
    p = Path(path)
    full = p if p.is_absolute() else run_dir / p
    try:
        rel = os.path.relpath(full, report_dir)
    except ValueError:  # another drive (Windows): an absolute URL is all there is
        return full.resolve().as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def dom_boxes(context: str | None) -> dict[int, list[int]]:
    """ref -> [left, top, width, height] from the DOM listing's lines `[7] input_text ... @(7,78 128x21)`."""
    out = {}
    for line in (context or "").splitlines():
        m = _BOX.match(line)
        if m:
            out[int(m.group(1))] = [int(m.group(i)) for i in range(2, 6)]
    return out


def action_target(step: Step, multi_step: bool) -> dict[str, Any] | None:
    """What the step's parsed action points at: {"ref", "box"} (box None: not on the page) or {"xy": [x, y]}."""
    if not (multi_step and step.parsed):
        return None
    from envs.miniwob.actions import ACTION_PREFIX, ActionError, parse_action  # miniwob only when it is needed

    try:
        a = parse_action(ACTION_PREFIX + step.parsed)
    except ActionError:
        return None
    if a.ref is not None:
        return {"ref": a.ref, "box": dom_boxes(step.observation.context).get(a.ref)}
    if a.kind == "click_xy":
        return {"xy": [a.x, a.y]}
    return None


def episode_json(e: Episode, records: RunRecords, report_dir: Path) -> dict[str, Any]:
    """One episode in full, as the episode page shows it."""
    t = e.traj
    steps = []
    for s, kind in zip(t.steps, e.step_kinds):
        o = s.observation
        info = {k: v for k, v in s.info.items() if k not in ("parsed", "error", "candidates")}
        imgs = [image_url(p, records.dir, report_dir) for p in o.images]
        steps.append({"goal": o.text, "choices": o.choices, "imgs": imgs,
                      "ctx": o.context, "last": o.last_action, "fmt": o.answer_format, "out": s.output,
                      "parsed": s.parsed, "reward": s.reward, "done": s.done, "err": s.info.get("error"), "kind": kind,
                      "info": info, "cands": s.info.get("candidates"), "target": action_target(s, records.multi_step)})
    return {"id": e.uid, "run": e.run, "runName": records.name, "file": e.file, "episodeId": t.episode_id,
            "split": e.split, "it": e.iteration, "ro": e.rollout, "env": t.env, "task": t.task_id, "seed": t.seed,
            "sample": t.sample, "model": t.model, "label": t.label, "reward": t.reward, "cause": e.cause,
            "error": t.error, "gold": t.gold, "maxSteps": records.max_steps, "multiStep": records.multi_step,
            "steps": steps}


def index_row(e: Episode, records: RunRecords, report_dir: Path) -> list[Any]:
    t = e.traj
    thumb = t.steps[0].observation.images[0] if t.steps and t.steps[0].observation.images else None
    return [e.uid, e.run, e.split, e.iteration, e.rollout, t.task_id, t.seed, t.sample, t.label, round(t.reward, 4),
            len(t.steps), e.cause, image_url(thumb, records.dir, report_dir) if thumb else ""]


def write_js(path: Path, var: str, value: Any) -> None:
    """`window.<var> = <json>;` (ASCII-escaped JSON is valid JavaScript, whatever the model wrote)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"window.{var} = {json.dumps(value, separators=(',', ':'))};\n")
    tmp.replace(path)


def write_episode_data(runs: list[RunRecords], report_dir: Path, meta: dict[str, Any]) -> int:
    """data/index.js and data/ep/*.js for the episodes of every run; returns how many episodes."""
    data = report_dir / "data"
    chunks = data / "ep"
    chunks.mkdir(parents=True, exist_ok=True)
    for old in chunks.glob("*.js"):
        old.unlink()
    rows: list[list[Any]] = []
    chunk: list[dict[str, Any]] = []
    for records in runs:
        for e in records.episodes:
            rows.append(index_row(e, records, report_dir))
            chunk.append(episode_json(e, records, report_dir))
            if len(chunk) == CHUNK:
                _write_chunk(chunks, (len(rows) - 1) // CHUNK, chunk)
                chunk = []
    if chunk:
        _write_chunk(chunks, (len(rows) - 1) // CHUNK, chunk)
    write_js(data / "index.js", "REPLAY_INDEX", {**meta, "chunk": CHUNK, "cols": COLUMNS, "rows": rows})
    return len(rows)


def _write_chunk(folder: Path, n: int, episodes: list[dict[str, Any]]) -> None:
    (folder / f"{n:04d}.js").write_text(f"replayChunk({n},{json.dumps(episodes, separators=(',', ':'))});\n")
