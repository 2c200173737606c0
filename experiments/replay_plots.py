"""The report's plots, from metrics.jsonl (matplotlib, Agg backend, PNG under replay/plots/).

A metrics row with a key beyond the contract's (iteration, split, metric, value, env, model, method, seed) is a
group row (e.g. `task`); the others are overall rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

BASE_KEYS = {"iteration", "split", "metric", "value", "env", "model", "method", "seed"}
KINDS = ("qa", "teacher", "sft", "refine", "select")
PAIRS = ("decision_pairs", "pairs_env_diverged", "pairs_same_choices")  # reflection.examples.contrast_counts
_AT_N = re.compile(r"(maj|select|pass)@(\d+)$")


def group_of(row: dict[str, Any]) -> str | None:
    """"key=value" for a group row, None for an overall row."""
    extra = sorted(k for k in row if k not in BASE_KEYS)
    return ", ".join(f"{k}={row[k]}" for k in extra) or None


def _series(rows: list[dict[str, Any]], metric: str, split: str) -> dict[str | None, dict[int, float]]:
    out: dict[str | None, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r.get("metric") == metric and r.get("split") == split:
            out[group_of(r)][int(r["iteration"])] = float(r["value"])
    return out


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _iter_axis(ax, title: str, ylabel: str, iterations: list[int]) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(set(iterations)))  # whole iterations only, even with one or two of them
    ax.grid(alpha=0.3)


def plot_test_at_1(rows: list[dict[str, Any]], path: Path) -> bool:
    series = _series(rows, "test@1", "test")
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted((g for g in series if g), key=str)
    for g in groups:
        pts = sorted(series[g].items())
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker=".", lw=1, alpha=0.7, label=g)
    if None in series:
        pts = sorted(series[None].items())
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", lw=3, color="black", label="overall")
    _iter_axis(ax, "test@1 (greedy success) per iteration", "success rate", [k for v in series.values() for k in v])
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)
    return True


def plot_at_n(rows: list[dict[str, Any]], path: Path) -> bool:
    """maj@N, select@N and pass@N over N, one line per metric and iteration (overall rows)."""
    lines: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        m = _AT_N.match(str(r.get("metric", "")))
        if m and r.get("split") == "test" and group_of(r) is None:
            lines[(m.group(1), int(r["iteration"]))][int(m.group(2))] = float(r["value"])
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"maj": "o-", "select": "s-", "pass": "^--"}
    for (metric, k), pts in sorted(lines.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], styles[metric], label=f"{metric}@N, iteration {k}")
    greedy = _series(rows, "test@1", "test").get(None, {})
    for k in sorted({k for _, k in lines}):
        if k in greedy:
            ax.axhline(greedy[k], ls=":", color="grey", lw=1)
            ax.annotate(f"test@1 it {k}", (min(min(p) for p in lines.values()), greedy[k]), fontsize=7, color="grey")
    ax.set_title("maj@N, select@N, pass@N over N")
    ax.set_xlabel("N")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _bars(ax, data: dict[str, dict[int, float]], title: str) -> None:
    names = [n for n in data if data[n]]
    iters = sorted({k for n in names for k in data[n]})
    width = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        ax.bar([k + (j - (len(names) - 1) / 2) * width for k in iters], [data[n].get(k, 0) for k in iters],
               width, label=n)
    _iter_axis(ax, title, "count", iters)
    if names:
        ax.legend(fontsize=7)


def plot_pool(rows: list[dict[str, Any]], path: Path) -> bool:
    """Positives/negatives sampled per iteration, training examples per objective per iteration, and (where
    the run records them) the contrastive pairs of each iteration's pool: with a decision step, or lost."""
    labels = {m: _series(rows, m, "train").get(None, {}) for m in ("positives", "negatives")}
    examples = {kind: _series(rows, f"{kind}_examples", "train").get(None, {}) for kind in KINDS}
    pairs = {m: _series(rows, m, "train").get(None, {}) for m in PAIRS}
    if not any(labels.values()) and not any(examples.values()):
        return False
    panels = 3 if any(pairs.values()) else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    _bars(axes[0], labels, "samples by label (drawn by model k)")
    _bars(axes[1], examples, "training examples per objective (model k)")
    if panels == 3:
        _bars(axes[2], pairs, "positive/negative pairs of the pool (model k)")
    _save(fig, path)
    return True


def plot_loss(rows: list[dict[str, Any]], path: Path) -> bool:
    pts = sorted(_series(rows, "train_loss", "train").get(None, {}).items())
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([k for k, _ in pts], [v for _, v in pts], "o-")
    _iter_axis(ax, "training loss per iteration (mean of the last 20 batches)", "loss", [k for k, _ in pts])
    _save(fig, path)
    return True


PLOTS = (("test_at_1.png", "test@1 per iteration", plot_test_at_1),
         ("at_n.png", "maj@N / select@N / pass@N over N", plot_at_n),
         ("pool.png", "samples and examples per iteration", plot_pool),
         ("train_loss.png", "training loss", plot_loss))


def write_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, str]]:
    """Write every plot the metrics allow; returns (file name, title) of those written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name, title, fn in PLOTS:
        if fn(rows, out_dir / name):
            done.append((name, title))
        else:
            (out_dir / name).unlink(missing_ok=True)
    return done
