"""Synthetic ChartQA-like items: a rendered vertical bar chart plus a value or comparison question.

Each chart has a title and 3-6 bars with distinct whole-number values (1-100) written above them, so that
"highest"/"lowest" questions never tie and every answer can be read off the image.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from envs.qa import QAItem
from envs.synthetic.common import Drawn, font, generate_items

COUNTRIES = ["Kenya", "Peru", "Chile", "Japan", "Spain", "Italy", "Egypt", "India", "Cuba", "Mali", "Nepal", "Oman"]
YEARS = [str(y) for y in range(2014, 2024)]
FRUITS = ["Apple", "Pear", "Plum", "Kiwi", "Lime", "Fig", "Date", "Peach", "Grape", "Melon"]
# (bar labels, titles). Labels are at most 35 px wide at size 11 so that six of them fit side by side;
# years stay in order, like a time series.
THEMES = [
    (COUNTRIES, ["Internet users (%)", "Forest cover (%)", "Medals won", "Rainy days in May", "Coffee cups per week"]),
    (YEARS, ["Bikes sold (thousands)", "Park visitors (thousands)", "New club members"]),
    (FRUITS, ["Favourite fruit (votes)", "Fruit sold (kg)", "Boxes shipped"]),
]
COLORS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (255, 112, 67),
          (0, 172, 193), (121, 85, 72)]
WIDTH, HEIGHT = 256, 192

Bars = list[tuple[str, int]]
Facts = tuple[str, str, list[str]]  # question, answer, solution steps


def _pair(a: str, va: int, b: str, vb: int) -> str:
    return f"{a} is {va} and {b} is {vb}."


def _value(rng: random.Random, bars: Bars) -> Facts:
    a, va = rng.choice(bars)
    return f"What is the value of {a}?", str(va), [f"The number above the bar for {a} is {va}."]


def _diff(rng: random.Random, bars: Bars) -> Facts:
    (a, va), (b, vb) = rng.sample(bars, 2)
    hi, lo = max(va, vb), min(va, vb)
    question = f"What is the difference between {a} and {b}?"
    return question, str(hi - lo), [_pair(a, va, b, vb), f"{hi} - {lo} = {hi - lo}."]


def _sum(rng: random.Random, bars: Bars) -> Facts:
    (a, va), (b, vb) = rng.sample(bars, 2)
    return f"What is the sum of {a} and {b}?", str(va + vb), [_pair(a, va, b, vb), f"{va} + {vb} = {va + vb}."]


def _extreme(bars: Bars, word: str, pick: Callable) -> Facts:
    label, v = pick(bars, key=lambda bar: bar[1])
    steps = [f"The values are {', '.join(f'{a} {va}' for a, va in bars)}.", f"The {word} is {v} ({label})."]
    return f"Which bar has the {word} value?", label, steps


def _compare(rng: random.Random, bars: Bars) -> Facts:
    (a, va), (b, vb) = rng.sample(bars, 2)
    verdict = f"{va} is greater than {vb}, so yes." if va > vb else f"{va} is less than {vb}, so no."
    return f"Is the value of {a} greater than the value of {b}?", "Yes" if va > vb else "No", [
        _pair(a, va, b, vb), verdict]


FAMILIES: dict[str, tuple[Callable[[random.Random, Bars], Facts], str]] = {
    "value": (_value, "relaxed"),
    "diff": (_diff, "relaxed"),
    "sum": (_sum, "relaxed"),
    "max": (lambda rng, bars: _extreme(bars, "highest", max), "text"),
    "min": (lambda rng, bars: _extreme(bars, "lowest", min), "text"),
    "compare": (_compare, "text"),
}


def render(title: str, bars: Bars, colors: list[tuple[int, int, int]]) -> Image.Image:
    """Draw the chart: title on top, bars scaled to the largest value, value above and label below each bar."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    title_font, label_font = font(13), font(11)
    draw.text((WIDTH // 2, 6), title, fill="black", font=title_font, anchor="mt")
    base, top, margin = HEIGHT - 24, 42, 8  # top leaves room for the tallest bar's value label
    slot = (WIDTH - 2 * margin) / len(bars)
    vmax = max(v for _, v in bars)
    for i, ((label, v), color) in enumerate(zip(bars, colors)):
        cx = margin + slot * (i + 0.5)
        y = base - round((base - top) * v / vmax)
        draw.rectangle([round(cx - slot * 0.3), y, round(cx + slot * 0.3), base], fill=color)
        draw.text((cx, y - 2), str(v), fill="black", font=label_font, anchor="mb")
        draw.text((cx, base + 4), label, fill="black", font=label_font, anchor="mt")
    draw.line([margin, base, WIDTH - margin, base], fill="gray")
    return img


def draw(rng: random.Random) -> Drawn:
    """One ChartQA-like question over a random bar chart."""
    labels, titles = rng.choice(THEMES)
    title = rng.choice(titles)
    chosen = rng.sample(labels, rng.randint(3, 6))
    if labels is YEARS:
        chosen.sort()
    bars = list(zip(chosen, rng.sample(range(1, 101), len(chosen))))
    family = rng.choice(list(FAMILIES))
    make, answer_type = FAMILIES[family]
    question, answer, steps = make(rng, bars)
    context = "\n".join([f"Title: {title}"] + [f"{a}: {v}" for a, v in bars])
    return Drawn(family, question, answer, answer_type, None, context, steps,
                 lambda: render(title, bars, rng.sample(COLORS, len(bars))))


def generate(n: int, seed: int, image_dir: Path, id_prefix: str) -> list[QAItem]:
    """n ChartQA-like items, deterministic from seed; writes f"{id}.png" per item into image_dir."""
    return generate_items(n, seed, image_dir, id_prefix, draw)
