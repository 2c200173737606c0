"""Summarise runs as markdown tables: `python experiments/summarize.py runs/*`.

Runs that differ only by seed are grouped, and every cell is the mean over seeds, then
`± half the range` when there are several. Two tables:
- test@1 per iteration, per (env, model, method)
- the N-sample metrics (maj@N, select@N, pass@N) at each group's last iteration
With `--by-task`, per-task test@1 rows (web tasks) are added.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def load(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        path = d / "metrics.jsonl"
        if not path.exists():
            print(f"warning: {path} does not exist, skipped", file=sys.stderr)
            continue
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def summarize(rows: list[dict], by_task: bool = False) -> str:
    test = [r for r in rows if r["split"] == "test" and (by_task or "task" not in r)]
    groups: dict[tuple, dict[tuple, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in test:
        key = (r["env"], r["model"], r["method"], r.get("task", "all"))
        groups[key][(r["metric"], r["iteration"])][r["seed"]] = r["value"]
    iterations = sorted({r["iteration"] for r in test})
    seeds = {k: sorted({s for v in g.values() for s in v}) for k, g in groups.items()}

    body = []
    for key, g in sorted(groups.items()):
        body.append([*key, str(len(seeds[key]))] + [cell(list(g[("test@1", k)].values())) if ("test@1", k) in g
                                                    else "" for k in iterations])
    out = ["test@1 by iteration (0 = after the warm-up):", "",
           table(["env", "model", "method", "task", "seeds"] + [f"iter {k}" for k in iterations], body)]

    n_metrics = sorted({m for g in groups.values() for m, _ in g if m != "test@1"},
                       key=lambda m: (int(re.sub(r"\D", "", m)), m))
    if n_metrics:
        body = []
        for key, g in sorted(groups.items()):
            last = max(k for _, k in g)
            if not any((m, last) in g for m in n_metrics):
                continue
            body.append([*key, str(last), cell(list(g[("test@1", last)].values()))]
                        + [cell(list(g[(m, last)].values())) if (m, last) in g else "" for m in n_metrics])
        out += ["", "At the last iteration:", "",
                table(["env", "model", "method", "task", "iter", "test@1"] + n_metrics, body)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--by-task", action="store_true", help="also per-task rows")
    args = parser.parse_args()
    rows = load(args.run_dirs)
    if not rows:
        sys.exit("error: no metrics.jsonl found in the given run directories")
    print(summarize(rows, args.by_task))


if __name__ == "__main__":
    main()
