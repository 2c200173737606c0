"""Summarise runs as markdown tables: `python experiments/summarize.py runs/*`.

Runs that differ only by seed are grouped, and every cell is the mean over seeds, then
`± half the range` when there are several. Runs whose configs differ in anything else (apart from
env, model and method, which have their own columns) get a `variant` column naming the differing keys.
Two tables:
- test@1 per iteration, per (env, model, method)
- the N-sample metrics (maj@N, select@N, pass@N) at each group's last iteration
With `--by-group`, rows per group are added (MiniWoB tasks, M3CoT domains and topics, TabMWP question types, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf


def flat_config(run_dir: Path) -> dict[str, str]:
    """The run's resolved config as dotted keys, without the keys that name the run rather than its recipe."""
    path = run_dir / "config.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(cfg, "")
    run_dir_value = out.get("run_dir", "\0")
    return {k: v for k, v in out.items() if k not in ("seed", "run_dir") and run_dir_value not in v}


def load(run_dirs: list[Path]) -> list[dict]:
    """Every run's metric rows, each with a `variant` label: the config keys in which its run differs from
    the other runs of the same env, model and method."""
    runs = []
    for d in run_dirs:
        path = d / "metrics.jsonl"
        if not path.exists():
            print(f"warning: {path} does not exist, skipped", file=sys.stderr)
            continue
        runs.append((flat_config(d), [json.loads(line) for line in path.read_text().splitlines() if line.strip()]))
    def family(cfg: dict) -> tuple:
        return cfg.get("env.name"), cfg.get("model.name"), cfg.get("method.name")

    rows = []
    for cfg, metrics in runs:
        kin = [c for c, _ in runs if family(c) == family(cfg)]
        varying = sorted(k for k in {k for c in kin for k in c} if len({c.get(k) for c in kin}) > 1)
        variant = " ".join(f"{k}={cfg.get(k)}" for k in varying) or "-"
        rows += [{**r, "variant": variant} for r in metrics]
    return rows


def cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


ROW_KEYS = {"iteration", "split", "metric", "value", "env", "model", "method", "seed", "variant"}


def group_of(row: dict) -> str:
    """"all", or the group a row reports on as "key=value" (the keys beyond the contract's)."""
    extra = sorted(k for k in row if k not in ROW_KEYS)
    return ", ".join(f"{k}={row[k]}" for k in extra) or "all"


def summarize(rows: list[dict], by_group: bool = False) -> str:
    test = [r for r in rows if r["split"] == "test" and (by_group or group_of(r) == "all")]
    groups: dict[tuple, dict[tuple, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in test:
        key = (r["env"], r["model"], r["method"], r.get("variant", "-"), group_of(r))
        groups[key][(r["metric"], r["iteration"])][r["seed"]] = r["value"]
    iterations = sorted({r["iteration"] for r in test})
    seeds = {k: sorted({s for v in g.values() for s in v}) for k, g in groups.items()}

    body = []
    for key, g in sorted(groups.items()):
        body.append([*key, str(len(seeds[key]))] + [cell(list(g[("test@1", k)].values())) if ("test@1", k) in g
                                                    else "" for k in iterations])
    out = ["test@1 by iteration (0 = after the warm-up):", "",
           table(["env", "model", "method", "variant", "group", "seeds"] + [f"iter {k}" for k in iterations], body)]

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
                table(["env", "model", "method", "variant", "group", "iter", "test@1"] + n_metrics, body)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--by-group", "--by-task", action="store_true",
                        help="also rows per group (task, domain, ...)")
    args = parser.parse_args()
    rows = load(args.run_dirs)
    if not rows:
        sys.exit("error: no metrics.jsonl found in the given run directories")
    print(summarize(rows, args.by_group))


if __name__ == "__main__":
    main()
