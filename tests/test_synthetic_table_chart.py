"""Tests for the synthetic TabMWP-like (table) and ChartQA-like (chart) generators.

The checkers below re-derive every gold answer from the item's `context` text and question alone, independently
of the generators' code, so a generator bug (wrong operand, wrong letter, stale facts) fails a test.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from envs.qa import QAItem
from envs.synthetic import chart, table

ANSWER_TYPES = ("integer", "number", "relaxed", "choice", "text")
MODULES = {"table": table, "chart": chart}
N = 200


def _mentioned(labels: list[str], question: str) -> list[str]:
    """The labels named in the question, in order of appearance."""
    found = [(m.start(), label) for label in labels for m in re.finditer(rf"\b{re.escape(label)}\b", question)]
    return [label for _, label in sorted(found)]


def _table_expected(item: QAItem) -> str | int:
    """The gold answer recomputed from the context table: exact cents, an integer, or a choice index."""
    header, *lines = item.context.split("\n")
    assert " | " in header
    rows = dict(line.split(" | ") for line in lines)
    family, q = item.meta["family"], item.question
    if family.startswith("price"):
        cents = {k: round(float(v.removeprefix("$")) * 100) for k, v in rows.items()}
        if family == "price_total":
            k, a, b = re.fullmatch(r"How much money does \w+ need to buy (\d+) (.+)s and an? (.+)\?", q).groups()
            return str(int(k) * cents[a] + cents[b])
        if family == "price_diff":
            a, b = re.fullmatch(r"How much more does an? (.+) cost than an? (.+)\?", q).groups()
            return str(cents[a] - cents[b])
        a, b = re.fullmatch(r"Is an? (.+) more expensive than an? (.+)\?", q).groups()
        return item.choices.index("yes" if cents[a] > cents[b] else "no")
    counts = {k: int(v) for k, v in rows.items()}
    if family == "count_diff":
        a, b = _mentioned(list(counts), q)
        return str(counts[a] - counts[b])
    if family == "count_mean":
        assert sum(counts.values()) % len(counts) == 0
        return str(sum(counts.values()) // len(counts))
    assert family == "count_max" and set(item.choices) <= set(counts)
    return item.choices.index(max(counts, key=counts.get))


def _table_check(item: QAItem) -> None:
    expected = _table_expected(item)
    if item.answer_type == "choice":
        assert item.answer == "ABCD"[expected]
    elif item.meta["family"].startswith("price"):
        assert round(float(item.answer) * 100) == int(expected)
    else:
        assert item.answer == expected


def _chart_check(item: QAItem) -> None:
    title, *lines = item.context.split("\n")
    assert title.startswith("Title: ")
    values = {label: int(v) for label, v in (line.rsplit(": ", 1) for line in lines)}
    assert len(set(values.values())) == len(values)  # no ties
    family, named = item.meta["family"], _mentioned(list(values), item.question)
    v = [values[label] for label in named]
    expected = {
        "value": lambda: str(v[0]),
        "diff": lambda: str(abs(v[0] - v[1])),
        "sum": lambda: str(v[0] + v[1]),
        "max": lambda: max(values, key=values.get),
        "min": lambda: min(values, key=values.get),
        "compare": lambda: "Yes" if v[0] > v[1] else "No",
    }[family]()
    assert len(named) == {"value": 1, "max": 0, "min": 0}.get(family, 2)
    assert item.answer == expected


CHECKS = {"table": _table_check, "chart": _chart_check}


@pytest.fixture(scope="module", params=list(MODULES))
def batch(request, tmp_path_factory) -> tuple[str, list[QAItem], Path]:
    name = request.param
    image_dir = tmp_path_factory.mktemp(name)
    return name, MODULES[name].generate(N, 0, image_dir, f"{name}_"), image_dir


@pytest.mark.parametrize("name", list(MODULES))
def test_deterministic(name: str, tmp_path: Path) -> None:
    gen = MODULES[name].generate
    a, b = gen(20, 5, tmp_path / "a", "x"), gen(20, 5, tmp_path / "b", "x")
    assert [dataclasses.asdict(i) for i in a] == [dataclasses.asdict(i) for i in b]
    for item in a:
        assert (tmp_path / "a" / item.image).read_bytes() == (tmp_path / "b" / item.image).read_bytes()
    other = gen(20, 6, tmp_path / "c", "x")
    assert [i.meta["key"] for i in other] != [i.meta["key"] for i in a]
    assert [dataclasses.asdict(i) for i in gen(5, 5, tmp_path / "d", "x")] == [dataclasses.asdict(i) for i in a[:5]]


def test_item_fields_and_images(batch) -> None:
    name, items, image_dir = batch
    assert len(items) == N
    for i, item in enumerate(items):
        assert item.id == f"{name}_{i:05d}" and item.image == f"{item.id}.png"
        with Image.open(image_dir / item.image) as img:
            img.load()
            assert img.format == "PNG" and 200 <= img.width <= 360 and 100 <= img.height <= 240
        assert item.answer_type in ANSWER_TYPES
        assert item.context and item.question and item.answer
        assert item.rationale.startswith("Solution:\n1. ")
        assert item.rationale.endswith(f"\nAnswer: {item.answer}")
        assert len(item.rationale.split()) <= 50  # short: small models generate it token by token
        if item.answer_type == "choice":
            assert len(item.choices) >= 2 and 0 <= ord(item.answer) - ord("A") < len(item.choices)
        else:
            assert item.choices is None


def test_gold_answers_recomputed_from_context(batch) -> None:
    name, items, _ = batch
    for item in items:
        CHECKS[name](item)


def test_keys_distinct_and_all_families_present(batch) -> None:
    name, items, _ = batch
    keys = [item.meta["key"] for item in items]
    assert all(isinstance(k, str) and k for k in keys) and len(set(keys)) == len(keys)
    families = Counter(item.meta["family"] for item in items)
    assert set(families) == set(MODULES[name].FAMILIES)


def test_teacher_rationale_scores_full_marks(batch) -> None:
    from envs import scoring

    _, items, _ = batch
    for item in items:
        assert item.answer_type in scoring.ANSWER_TYPES
        assert scoring.score(item.rationale, item.answer, item.answer_type, item.choices)[1] == 1.0
