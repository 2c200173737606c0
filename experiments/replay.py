"""Replay a run: every episode the agent played, why it failed, and what self-training changed.

    python experiments/replay.py RUN_DIR                        # writes RUN_DIR/replay/index.html, prints a summary
    python experiments/replay.py RUN_DIR --against OTHER_RUN    # + both runs side by side on shared test episodes
    python experiments/replay.py RUN_DIR --rerun EPISODE_ID     # re-execute a MiniWoB++ episode, check it, GIF

EPISODE_ID is `<record file>:<episode_id>` as the report shows it (`iter_0/teacher.jsonl:click-test#0#teacher`),
or a bare episode_id when one record file only holds it. The report is static HTML/CSS/JS that opens from
file:// with no server and no network. Exit status: 0, 1 when a re-execution diverged, 2 on a bad run directory
(a missing config, an unknown record schema version, an unknown episode).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):  # run from a checkout without installing; sibling replay_* modules
    if p not in sys.path:
        sys.path.insert(0, p)

from replay_causes import summary_rows, summary_text  # noqa: E402
from replay_compare import against_compare, against_summary, iteration_compare  # noqa: E402
from replay_data import write_episode_data, write_js  # noqa: E402
from replay_html import write_pages  # noqa: E402
from replay_plots import write_plots  # noqa: E402
from replay_records import ReplayError, RunRecords, load_run  # noqa: E402
from replay_rerun import load_reruns, rerun  # noqa: E402
from replay_training import contrasts  # noqa: E402


def _meta(records: RunRecords, other: RunRecords | None) -> dict:
    def facts(r: RunRecords) -> dict:
        return {"name": r.name, "env": (r.cfg.get("env") or {}).get("name"),
                "method": (r.cfg.get("method") or {}).get("name"), "multiStep": r.multi_step,
                "maxSteps": r.max_steps, "iterations": r.iterations}

    return {"run": facts(records), "other": facts(other) if other else None}


def build_report(records: RunRecords, other: RunRecords | None = None, report_dir: Path | None = None,
                 plots: bool = True) -> tuple[Path, int]:
    """Write the whole report into `report_dir` (RUN_DIR/replay); returns the path of its index.html and how
    many test rollouts (task, seed, rollout) the two runs share (0 without `other`)."""
    report_dir = report_dir or records.dir / "replay"
    report_dir.mkdir(parents=True, exist_ok=True)
    runs = [records] + ([other] if other else [])
    n = write_episode_data(runs, report_dir, _meta(records, other))
    compare = {"iters": iteration_compare(records), "train": contrasts(records), "against": [], "againstSummary": []}
    if other:
        compare["against"] = against_compare(records, other)
        compare["againstSummary"] = against_summary(records, other, compare["against"])
    write_js(report_dir / "data" / "compare.js", "REPLAY_COMPARE", compare)
    reruns = load_reruns(report_dir)
    write_js(report_dir / "data" / "reruns.js", "REPLAY_RERUNS", reruns)
    figures = write_plots(records.metrics, report_dir / "plots") if plots else []
    note = f"compared against {other.name} ({len(compare['against'])} shared test rollouts)" if other else ""
    index = write_pages(report_dir, records, summary_rows(records.episodes), figures, reruns, n, note)
    return index, len(compare["against"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory (holds config.yaml, iter_K/...)")
    ap.add_argument("--against", type=Path, metavar="OTHER_RUN_DIR", help="compare with another run's test episodes")
    ap.add_argument("--rerun", action="append", default=[], metavar="EPISODE_ID",
                    help="re-execute a recorded MiniWoB++ episode (repeatable)")
    ap.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    ap.add_argument("--brief", action="store_true", help="print the all-tasks summary lines only")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        records = load_run(args.run_dir)
        other = load_run(args.against, run=1, test_only=True) if args.against else None
        diverged = 0
        for spec in args.rerun:
            result = rerun(records, spec, records.dir / "replay")
            diverged += not result["ok"]
            print(f"rerun {result['uid']}: {result['message']}")
            print(f"  GIF: {records.dir / 'replay' / result['gif']}")
        index, shared = build_report(records, other, plots=not args.no_plots)
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary_rows(records.episodes), many_tasks=not args.brief))
    if other:
        print(f"against {other.dir}: {shared} shared test rollouts (task, seed, rollout)"
              + ("; none shared: are both runs of the same env and test split?" if not shared else ""))
    print(f"{len(records.episodes) + (len(other.episodes) if other else 0)} episodes, "
          f"report built in {time.perf_counter() - start:.1f} s")
    print(index)
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
