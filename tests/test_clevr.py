"""The synth_clevr generator and the synthetic dataset builder."""

from __future__ import annotations

import random
import re

from PIL import Image

from envs.qa import read_items
from envs.scoring import score
from envs.synthetic import build_dataset
from envs.synthetic.clevr import COLORS, GRID, SHAPES, generate


def _count_from_context(item) -> int:
    """Recompute the answer independently from the text facts and the question."""
    numbered = [o.split() for o in item.context.split(": ", 1)[1].rstrip(".").split(", ")]
    assert [int(o[0]) for o in numbered] == list(range(1, len(numbered) + 1))
    objects = [tuple(o[1:]) for o in numbered]
    what = re.match(r"Subtract all (.+)\. How many objects are left\?", item.question).group(1).split()
    color = what[0] if what[0] in COLORS else None
    shape = what[-1][:-1] if what[-1][:-1] in SHAPES else None
    removed = sum((color is None or c == color) and (shape is None or s == shape) for c, s in objects)
    return len(objects) - removed


def test_generation_is_deterministic(tmp_path):
    a = generate(20, 3, tmp_path / "a", "x")
    b = generate(20, 3, tmp_path / "b", "x")
    assert a == b
    assert all((tmp_path / "a" / i.image).read_bytes() == (tmp_path / "b" / i.image).read_bytes() for i in a)
    assert generate(20, 4, tmp_path / "c", "x") != a


def test_answers_and_rationales_are_right(tmp_path):
    items = generate(200, 0, tmp_path, "x")
    for item in items:
        assert int(item.answer) == _count_from_context(item)
        assert item.rationale.endswith(f"Answer: {item.answer}")
        assert score(item.rationale, item.answer, item.answer_type)[1] == 1.0
    assert {i.meta["family"] for i in items} == {"color_shape", "color", "shape"}
    assert len({i.answer for i in items}) >= 5  # answers are spread, not constant


def test_image_has_one_object_per_listed_cell(tmp_path):
    item = generate(1, 7, tmp_path, "x")[0]
    img = Image.open(tmp_path / item.image)
    assert img.size == (GRID * 32, GRID * 32)
    background = img.getpixel((0, 0))
    cells = GRID * GRID
    occupied = 0
    for i in range(cells):
        x0, y0 = (i % GRID) * 32, (i // GRID) * 32
        pixels = [img.getpixel((x0 + dx, y0 + dy)) for dx in range(32) for dy in range(32)]
        occupied += sum(p != background for p in pixels) > 50
    assert occupied == item.meta["n_objects"]


def test_dataset_splits_are_disjoint_and_reused(tmp_path):
    d = build_dataset("synth_clevr", tmp_path / "ds", n_train=60, n_test=30, seed=1)
    train, test = read_items(d / "train.jsonl"), read_items(d / "test.jsonl")
    assert (len(train), len(test)) == (60, 30)
    assert not {i.meta["key"] for i in train} & {i.meta["key"] for i in test}
    assert all((d / i.image).exists() for i in train + test)
    stamp = (d / "train.jsonl").stat().st_mtime_ns
    build_dataset("synth_clevr", tmp_path / "ds", n_train=60, n_test=30, seed=1)
    assert (d / "train.jsonl").stat().st_mtime_ns == stamp  # same settings: reused, not regenerated
    build_dataset("synth_clevr", tmp_path / "ds", n_train=40, n_test=30, seed=1)
    assert len(read_items(d / "train.jsonl")) == 40


def test_other_generators_build_datasets(tmp_path):
    for name in ("synth_table", "synth_chart"):
        d = build_dataset(name, tmp_path / name, n_train=10, n_test=5, seed=0)
        items = read_items(d / "train.jsonl")
        assert len(items) == 10 and all((d / i.image).exists() for i in items)
        rng = random.Random(0)
        item = rng.choice(items)
        assert score(item.rationale, item.answer, item.answer_type, item.choices)[1] == 1.0
