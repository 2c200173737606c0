"""Why self-select does or does not beat majority vote: `python experiments/diagnose_select.py RUN_DIRS`.

Reads each run's last `iter_*/eval.jsonl` (one-step episodes: QA; web episodes record no per-step
candidates) and, for each N >= 2, looks only at the questions where the select prompt was really asked
(the N sampled answers disagree; answers compared as maj@N compares them: parsed strings, exactly). On those
it compares select's accuracy with majority vote's, with a random pick among the candidates (chance) and with
pass@N (some candidate is right), and says what select picked: the majority answer, the first candidate's
answer (position bias: compare with its chance share), an answer no candidate gave, or nothing parsable.
Runs with `eval.select_orders` > 1 also show select's accuracy from the first candidate order alone (what
asking once would have given), how often every order picked the same answer, and a clean test of position bias:
how often an order's pick is the answer of the candidate listed first in it, against how often it is that of
the candidate at an average position (over all N rotations every candidate sits at every position once, so an
order-blind selector scores the same on both).
Runs are pooled (every question of every run counts once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from reflection.rollout import majority_index, rotations  # noqa: E402


def last_eval(run_dir: Path) -> Path | None:
    """The eval.jsonl of the run's last evaluated iteration."""
    paths = sorted(run_dir.glob("iter_*/eval.jsonl"), key=lambda p: int(p.parent.name.split("_")[1]))
    return paths[-1] if paths else None


def diagnose(records: list[dict], n: int) -> dict[str, float]:
    """Figures for select@n over the records whose first n samples disagree (see the module docstring)."""
    rows = []
    for r in records:
        samples, chosen = r["samples"][:n], r.get("select", {}).get(str(n))
        if len(samples) < n or chosen is None or "parsed" not in chosen:
            continue  # fewer samples, or a web episode (its select record is a rollout, not one choice)
        answers = [s["parsed"] for s in samples]
        if len(set(answers)) == 1 and answers[0] is not None:
            continue  # unanimous: select is not asked (as in self_select)
        picked, winner = chosen["parsed"], majority_index(answers)  # the vote of maj@N
        vote = answers[winner]
        row = {
            "select": chosen["reward"] > 0,
            "select_first_order": chosen.get("orders", [chosen])[0]["reward"] > 0,
            "majority": samples[winner]["reward"] > 0,
            "chance": sum(s["reward"] > 0 for s in samples) / n,
            "pass": any(s["reward"] > 0 for s in samples),
            "picked_majority": picked is not None and picked == vote,
            "picked_first": picked is not None and picked == answers[0],
            "first_share": answers.count(answers[0]) / n if answers[0] is not None else 0.0,
            "picked_outside": picked is not None and picked not in answers,
            "picked_unparsable": picked is None,
        }
        if "orders" in chosen:
            picks = [o["parsed"] for o in chosen["orders"]]
            listed = rotations(answers, len(picks))  # the candidates' answers in each order asked
            row["orders_agree"] = len(set(picks)) == 1
            row["picked_first_listed"] = sum(p is not None and p == a[0] for p, a in zip(picks, listed)) / len(picks)
            row["picked_average_position"] = sum(sum(p is not None and p == x for x in a) / n
                                                 for p, a in zip(picks, listed)) / len(picks)
        rows.append(row)
    out: dict[str, float] = {"questions": len(records), "asked": len(rows)}
    for key in dict.fromkeys(k for row in rows for k in row):  # the order-only keys: over the records with orders
        values = [row[key] for row in rows if key in row]
        out[key] = sum(values) / len(values)
    return out


COLUMNS = [("asked", "asked"), ("select", "select acc"), ("select_first_order", "select acc, 1 order"),
           ("majority", "maj acc"), ("chance", "random pick acc"), ("pass", "pass (some right)"),
           ("picked_majority", "picked maj answer"), ("picked_first", "picked 1st cand."),
           ("first_share", "1st cand. share"), ("picked_outside", "picked no cand."),
           ("picked_unparsable", "unparsable"),
           ("orders_agree", "orders agree"), ("picked_first_listed", "picked 1st listed"),
           ("picked_average_position", "picked avg. position")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    records = []
    for d in args.run_dirs:
        path = last_eval(d)
        if path is None:
            print(f"warning: no iter_*/eval.jsonl in {d}, skipped", file=sys.stderr)
            continue
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ns = sorted({int(n) for r in records for n, c in r.get("select", {}).items() if int(n) >= 2 and "parsed" in c})
    if not ns:
        sys.exit("error: no select@N (N >= 2) records of one-step episodes in the given run directories")
    print(f"{len(records)} test questions; on the questions whose N samples disagree (select is asked):\n")
    print("| N | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for n in ns:
        figures = diagnose(records, n)
        cells = [str(int(figures["asked"]))] + [f"{figures[k]:.3f}" if k in figures else "" for k, _ in COLUMNS[1:]]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
