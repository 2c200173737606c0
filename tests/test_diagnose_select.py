"""experiments/diagnose_select.py: figures on hand-built eval records with known answers."""

import json
import subprocess
import sys
from pathlib import Path

from reflection.rollout import majority_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from diagnose_select import diagnose  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def record(gold: str, answers: list[str | None], picked: dict[int, str | None]) -> dict:
    return {"gold": gold, "samples": [{"parsed": a, "reward": float(a == gold)} for a in answers],
            "select": {str(n): {"output": f"Answer: {p}", "parsed": p, "reward": float(p == gold)}
                       for n, p in picked.items()}}


RECORDS = [
    record("1", ["1", "1", "1"], {2: "1", 3: "1"}),        # unanimous: not asked at any N
    record("2", ["3", "2", "3"], {2: "2", 3: "2"}),        # select right, vote wrong (at N=3)
    record("4", ["4", "5", "5"], {2: "5", 3: "4"}),        # N=2 tie: the vote takes the first (right)
    record("6", ["7", None, "7"], {2: "9", 3: None}),      # picks an answer no candidate gave; then nothing
]


def test_majority_ties_go_to_the_first_and_none_does_not_vote():
    assert majority_index(["a", "b", "b"]) == 1
    assert majority_index(["a", "b"]) == 0
    assert majority_index([None, None, "c"]) == 2
    assert majority_index([None]) == 0


def test_figures_on_known_records():
    three = diagnose(RECORDS, 3)
    assert three["asked"] == 3 and three["questions"] == 4
    assert three["select"] == 2 / 3           # records 2 and 3
    assert three["majority"] == 0             # "3", "5", "7" all wrong
    assert three["chance"] == (1 / 3 + 1 / 3 + 0) / 3
    assert three["pass"] == 2 / 3
    assert three["picked_majority"] == 0
    assert three["picked_first"] == 1 / 3      # record 3 picked "4", its first candidate
    assert three["first_share"] == (2 / 3 + 1 / 3 + 2 / 3) / 3
    assert three["picked_outside"] == 0 and three["picked_unparsable"] == 1 / 3
    assert three["select_first_order"] == three["select"]  # asked in one order: the same choice
    two = diagnose(RECORDS, 2)
    assert two["asked"] == 3                   # ["3","2"], ["4","5"], ["7",None]
    assert two["majority"] == 1 / 3            # the tie on record 3 goes to "4"
    assert two["picked_outside"] == 1 / 3      # "9"


def test_cli_reads_the_last_iteration_and_skips_web_records(tmp_path):
    run = tmp_path / "run"
    for k, recs in ((0, RECORDS[:1]), (1, RECORDS + [{"samples": [{"parsed": None, "reward": 1.0}] * 3,
                                                       "select": {"3": {"outputs": ["click(1)"], "reward": 1.0}}}])):
        (run / f"iter_{k}").mkdir(parents=True)
        (run / f"iter_{k}" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = subprocess.run([sys.executable, str(ROOT / "experiments/diagnose_select.py"), str(run)],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("5 test questions")
    assert "| 3 | 3 | 0.667 | 0.667 | 0.000 |" in out and "| 2 | 3 |" in out


def test_cli_fails_clearly_without_records(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments/diagnose_select.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "no select@N" in done.stderr


def test_select_in_several_orders_shows_the_first_order_alone():
    """A record asked in 3 candidate orders: the vote's accuracy and the first order's are both reported."""
    voted = record("2", ["3", "2", "3"], {3: "2"})
    voted["select"]["3"]["orders"] = [{"output": "Answer: 3", "parsed": "3", "reward": 0.0},
                                      {"output": "Answer: 2", "parsed": "2", "reward": 1.0},
                                      {"output": "Answer: 2", "parsed": "2", "reward": 1.0}]
    figures = diagnose([voted, RECORDS[2]], 3)
    assert figures["asked"] == 2 and figures["select"] == 1.0
    assert figures["select_first_order"] == 0.5  # the voted record's first order picked "3", wrong
    # position bias, over the record with orders only: orders list 3,2,3 / 2,3,3 / 3,3,2; picks 3, 2, 2
    assert figures["orders_agree"] == 0.0
    assert figures["picked_first_listed"] == 2 / 3      # 3 = 3 (first listed), 2 = 2, 2 != 3
    assert figures["picked_average_position"] == (2 / 3 + 1 / 3 + 1 / 3) / 3
    assert "orders_agree" not in diagnose(RECORDS, 3)  # no orders asked: no such figure
