"""The report's HTML pages: index.html (summary, episode index, plots, re-executions), episode.html and
compare.html (shells that render from the data files with the scripts of replay_assets/)."""

from __future__ import annotations

import html
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

from replay_records import RunRecords

ASSETS = Path(__file__).resolve().parent / "replay_assets"
SCRIPTS = {"index": ["data/index.js", "data/reruns.js", "assets/common.js", "assets/index.js"],
           "episode": ["data/index.js", "data/reruns.js", "assets/common.js", "assets/episode.js"],
           "compare": ["data/index.js", "data/compare.js", "assets/common.js", "assets/compare.js"]}
esc = html.escape


def copy_assets(report_dir: Path) -> None:
    dest = report_dir / "assets"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ASSETS.iterdir():
        if f.suffix in (".js", ".css"):
            shutil.copyfile(f, dest / f.name)


def _page(title: str, records: RunRecords, body: str, scripts: list[str]) -> str:
    cfg = records.cfg
    facts = " · ".join(f"{k} {esc(str((cfg.get(k) or {}).get('name', '-')))}" for k in ("env", "model", "method"))
    tags = "".join(f'<script src="{s}"></script>' for s in scripts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="assets/replay.css"></head><body>\n'
            f'<header class="top"><h1>Replay · {esc(records.name)}</h1><nav><a href="index.html#">Episodes</a>'
            f'<a href="index.html#summary-top">Summary</a><a href="index.html#plots-top">Plots</a>'
            f'<a href="compare.html">Compare</a></nav>'
            f'<span class="meta">{facts} · seed {esc(str(cfg.get("seed", "-")))}</span></header>\n'
            f'{body}\n{tags}\n</body></html>\n')


def _filter_link(**state: Any) -> str:
    return "index.html#" + urllib.parse.urlencode({k: v for k, v in state.items() if v not in ("", None)},
                                                  quote_via=urllib.parse.quote)


def summary_html(rows: list[dict[str, Any]]) -> str:
    """Per iteration: a table of split/rollout x task, success rate and failure causes (links to the index)."""
    out = []
    for k in sorted({r["iteration"] for r in rows}):
        body = []
        for r in (r for r in rows if r["iteration"] == k):
            total = r["task"] == "all tasks"
            state = {"it": k, "g": r["group"], "task": "" if total else r["task"]}
            causes = " ".join(f'<a class="chip negative" href="{esc(_filter_link(**state, cause=c))}">{esc(c)} {n}</a>'
                              for c, n in r["causes"].items())
            rate = r["success"] / r["n"] if r["n"] else 0.0
            body.append(f'<tr class="{"total" if total else "task"}"><td>{esc(r["group"])}</td>'
                        f'<td><a href="{esc(_filter_link(**state))}">{esc(r["task"])}</a></td>'
                        f'<td class="num">{r["success"]}/{r["n"]}</td><td><span class="rate"><span style="width:'
                        f'{100 * rate:.1f}%"></span></span>{rate:.1%}</td><td>{causes}</td></tr>')
        out.append(f'<h3>Iteration {k}</h3><table class="summary"><thead><tr><th>split/rollout</th><th>task</th>'
                   f'<th>success</th><th>rate</th><th>failure causes (episodes)</th></tr></thead><tbody>'
                   + "".join(body) + "</tbody></table>")
    return "\n".join(out)


def reruns_html(reruns: dict[str, dict[str, Any]]) -> str:
    if not reruns:
        return ""
    rows = "".join(f'<tr><td><a href="episode.html#id={urllib.parse.quote(uid, safe="")}">{esc(uid)}</a></td>'
                   f'<td class="{"fixed" if r["ok"] else "broken"}">{"reproduced" if r["ok"] else "diverged"}</td>'
                   f'<td>{esc(r["message"])}</td><td><img class="gif" src="{esc(r["gif"])}" alt="re-execution" '
                   f'loading="lazy" height="120"></td></tr>' for uid, r in sorted(reruns.items()))
    return (f'<h2 id="reruns-top">Re-executions</h2><table class="list"><thead><tr><th>episode</th><th>result</th>'
            f'<th>details</th><th>replay</th></tr></thead><tbody>{rows}</tbody></table>')


def write_pages(report_dir: Path, records: RunRecords, summary: list[dict[str, Any]], plots: list[tuple[str, str]],
                reruns: dict[str, dict[str, Any]], n_episodes: int, note: str = "") -> Path:
    """index.html, episode.html, compare.html and the assets; returns index.html's path."""
    copy_assets(report_dir)
    figures = "".join(f'<figure><img src="plots/{esc(name)}" alt="{esc(title)}" loading="lazy">'
                      f'<figcaption>{esc(title)} (plots/{esc(name)})</figcaption></figure>' for name, title in plots)
    built = time.strftime("%Y-%m-%d %H:%M")
    body = (f'<main>\n<p class="meta">{n_episodes} recorded episodes · report built {built} · '
            f'<a href="compare.html">compare iterations, training pairs{", runs" if note else ""}</a>'
            f'{" · " + esc(note) if note else ""}</p>\n'
            f'<h2 id="episodes-top">Episodes</h2><div id="filters"></div><div id="counts"></div>'
            f'<table id="table"></table><div id="pager"></div>\n'
            f'<h2 id="summary-top">Summary: success and failure causes</h2>{summary_html(summary)}\n'
            f'{reruns_html(reruns)}\n'
            f'<h2 id="plots-top">Plots</h2>'
            f'<div class="plots">{figures or "<p>metrics.jsonl has nothing to plot.</p>"}</div>\n'
            f'</main>')
    index = report_dir / "index.html"
    index.write_text(_page(f"Replay: {records.name}", records, body, SCRIPTS["index"]))
    (report_dir / "episode.html").write_text(_page(f"Episode: {records.name}", records, '<main id="main" class="page">'
                                                   'loading...</main>', SCRIPTS["episode"]))
    (report_dir / "compare.html").write_text(_page(f"Compare: {records.name}", records, '<main id="main" class="page">'
                                                   'loading...</main>', SCRIPTS["compare"]))
    return index
