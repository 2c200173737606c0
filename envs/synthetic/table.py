"""Synthetic TabMWP-like items: a rendered table image plus a math word problem about it.

Two table kinds (item/price lists and simple frequency tables) and six question families; every number is
round-ish (prices in multiples of $0.05 under $10, counts under 100) so that a small model can learn the arithmetic
from the teacher's rationales.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from envs.qa import QAItem
from envs.synthetic.common import Drawn, font, generate_items

# Regular plurals only: questions say f"{k} {item}s".
SHOPS = [
    ["pencil", "eraser", "ruler", "notebook", "marker", "crayon", "glue stick", "folder", "sticker", "bookmark"],
    ["apple", "muffin", "bagel", "pretzel", "cookie", "banana", "orange", "lemon", "pear", "donut"],
    ["kite", "puzzle", "yo-yo", "robot", "doll", "whistle", "marble", "balloon", "toy car", "jump rope"],
]
NAMES = ["Ann", "Ben", "Carlos", "Dina", "Emma", "Farid", "Grace", "Hugo", "Ivy", "Jamal", "Kenji", "Lena"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
# (row header, column header, row labels, value range, "how many more" question, "which is most" question)
COUNT_TABLES = [
    ("Day", "Number of visitors", DAYS, (10, 99),
     "How many more visitors were there on {a} than on {b}?", "On which day were there the most visitors?"),
    ("Name", "Books read", NAMES, (2, 40), "How many more books did {a} read than {b}?", "Who read the most books?"),
    ("Month", "Cups sold", MONTHS, (10, 99),
     "How many more cups were sold in {a} than in {b}?", "In which month were the most cups sold?"),
]

Rows = list[tuple[str, str]]  # header first, then body rows
Facts = tuple[Rows, str, str, list[str] | None, list[str]]  # rows, question, answer, choices, solution steps


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _prices(rng: random.Random) -> list[tuple[str, int]]:
    items = rng.sample(rng.choice(SHOPS), rng.randint(3, 6))
    return list(zip(items, rng.sample(range(5, 1000, 5), len(items))))


def _price_rows(prices: list[tuple[str, int]]) -> Rows:
    return [("Item", "Price")] + [(name, _money(c)) for name, c in prices]


def _costs(a: str, pa: int, b: str, pb: int) -> str:
    return f"{_a(a).capitalize()} costs {_money(pa)} and {_a(b)} costs {_money(pb)}."


def _price_total(rng: random.Random) -> Facts:
    prices = _prices(rng)
    (a, pa), (b, pb) = rng.sample(prices, 2)
    k = rng.randint(2, 5)
    question = f"How much money does {rng.choice(NAMES)} need to buy {k} {a}s and {_a(b)}?"
    steps = [_costs(a, pa, b, pb), f"{k} {a}s cost {k} x {_money(pa)} = {_money(k * pa)}.",
             f"{_money(k * pa)} + {_money(pb)} = {_money(k * pa + pb)}."]
    return _price_rows(prices), question, _money(k * pa + pb)[1:], None, steps


def _price_diff(rng: random.Random) -> Facts:
    prices = _prices(rng)
    (a, pa), (b, pb) = sorted(rng.sample(prices, 2), key=lambda p: -p[1])
    question = f"How much more does {_a(a)} cost than {_a(b)}?"
    steps = [_costs(a, pa, b, pb), f"{_money(pa)} - {_money(pb)} = {_money(pa - pb)}."]
    return _price_rows(prices), question, _money(pa - pb)[1:], None, steps


def _price_compare(rng: random.Random) -> Facts:
    prices = _prices(rng)
    (a, pa), (b, pb) = rng.sample(prices, 2)
    relation = "more" if pa > pb else "less"
    yes_no = "yes" if pa > pb else "no"
    steps = [_costs(a, pa, b, pb), f"{_money(pa)} is {relation} than {_money(pb)}, so {yes_no}."]
    return (_price_rows(prices), f"Is {_a(a)} more expensive than {_a(b)}?", "A" if pa > pb else "B",
            ["yes", "no"], steps)


def _counts(rng: random.Random) -> tuple[tuple, list[tuple[str, int]]]:
    table = rng.choice(COUNT_TABLES)
    pool, (low, high) = table[2], table[3]
    labels = sorted(rng.sample(pool, rng.randint(3, 6)), key=pool.index)  # days and months in calendar order
    # Distinct values: "which is most" never has a tie.
    return table, list(zip(labels, rng.sample(range(low, high + 1), len(labels))))


def _count_rows(table: tuple, counts: list[tuple[str, int]]) -> Rows:
    return [(table[0], table[1])] + [(label, str(v)) for label, v in counts]


def _count_diff(rng: random.Random) -> Facts:
    table, counts = _counts(rng)
    (a, va), (b, vb) = sorted(rng.sample(counts, 2), key=lambda c: -c[1])
    steps = [f"The table shows {va} for {a} and {vb} for {b}.", f"{va} - {vb} = {va - vb}."]
    return _count_rows(table, counts), table[4].format(a=a, b=b), str(va - vb), None, steps


def _count_mean(rng: random.Random) -> Facts:
    table, counts = _counts(rng)
    while sum(v for _, v in counts) % len(counts):  # resample until the mean is a whole number
        table, counts = _counts(rng)
    values = [v for _, v in counts]
    total, n = sum(values), len(values)
    steps = [f"Add the numbers: {' + '.join(map(str, values))} = {total}.",
             f"Divide by {n}: {total} / {n} = {total // n}."]
    return _count_rows(table, counts), "What is the mean of the numbers?", str(total // n), None, steps


def _count_max(rng: random.Random) -> Facts:
    table, counts = _counts(rng)
    best = max(counts, key=lambda c: c[1])
    others = [c for c in counts if c != best]
    options = sorted(rng.sample(others, min(3, len(others))) + [best], key=counts.index)
    steps = [f"Compare: {', '.join(f'{label} {v}' for label, v in options)}.",
             f"The largest number is {best[1]} ({best[0]})."]
    letter = chr(ord("A") + options.index(best))
    return _count_rows(table, counts), table[5], letter, [label for label, _ in options], steps


FAMILIES: dict[str, tuple[Callable[[random.Random], Facts], str]] = {
    "price_total": (_price_total, "number"),
    "price_diff": (_price_diff, "number"),
    "price_compare": (_price_compare, "choice"),
    "count_diff": (_count_diff, "number"),
    "count_mean": (_count_mean, "number"),
    "count_max": (_count_max, "choice"),
}


def render(rows: Rows) -> Image.Image:
    """Draw the table: shaded header row, grid lines, left-aligned cells."""
    text_font, pad, row_h = font(14), 10, 26
    widths = [max(int(text_font.getlength(r[col])) for r in rows) + 2 * pad for col in range(2)]
    widths[1] += max(0, 240 - 2 * pad - sum(widths))  # at least 240 px wide: small tables stay legible
    x0, y0 = pad, pad
    img = Image.new("RGB", (sum(widths) + 2 * pad, row_h * len(rows) + 2 * pad), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([x0, y0, x0 + sum(widths), y0 + row_h], fill=(220, 228, 240))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            draw.text((x0 + sum(widths[:c]) + pad, y0 + r * row_h + row_h // 2), text, fill="black", font=text_font,
                      anchor="lm")
    for r in range(len(rows) + 1):
        draw.line([x0, y0 + r * row_h, x0 + sum(widths), y0 + r * row_h], fill="gray")
    for x in (0, widths[0], sum(widths)):
        draw.line([x0 + x, y0, x0 + x, y0 + row_h * len(rows)], fill="gray")
    return img


def draw(rng: random.Random) -> Drawn:
    """One TabMWP-like question over a random table."""
    family = rng.choice(list(FAMILIES))
    make, answer_type = FAMILIES[family]
    rows, question, answer, choices, steps = make(rng)
    context = "\n".join(f"{a} | {b}" for a, b in rows)
    return Drawn(family, question, answer, answer_type, choices, context, steps, lambda: render(rows))


def generate(n: int, seed: int, image_dir: Path, id_prefix: str) -> list[QAItem]:
    """n TabMWP-like items, deterministic from seed; writes f"{id}.png" per item into image_dir."""
    return generate_items(n, seed, image_dir, id_prefix, draw)
