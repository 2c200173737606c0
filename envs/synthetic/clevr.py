"""synth_clevr: CLEVR-Math-style subtraction questions over rendered 3D-looking shapes.

Objects sit in the cells of a GRID x GRID board (one object per cell, a little jitter), so that a vision
tower with GRID x GRID tokens sees one object per token. The teacher counts the objects, names the ones to
subtract, and subtracts: the stand-in for the paper's GPT-4o rationales.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from envs.qa import QAItem

GRID = 4
CELL = 32  # pixels per cell; the image is GRID * CELL square
COLORS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 180),
}
SHAPES = ("cube", "sphere", "cylinder")
BACKGROUND = (205, 205, 200)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(c * f))) for c in rgb)  # type: ignore[return-value]


def _draw_object(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, shape: str, rgb) -> None:
    """Draw one shape with its top-left corner at (x, y): flat shading suggests 3D."""
    s, d = size, size // 4  # d: depth offset of the lit top face
    if shape == "cube":
        draw.polygon([(x, y + d), (x + d, y), (x + s, y), (x + s - d, y + d)], fill=_shade(rgb, 1.3))
        draw.polygon([(x + s - d, y + d), (x + s, y), (x + s, y + s - d), (x + s - d, y + s)], fill=_shade(rgb, 0.7))
        draw.rectangle([x, y + d, x + s - d, y + s], fill=rgb)
    elif shape == "sphere":
        draw.ellipse([x, y, x + s, y + s], fill=_shade(rgb, 0.75))
        draw.ellipse([x + 1, y + 1, x + s - 4, y + s - 4], fill=rgb)
        draw.ellipse([x + s // 4, y + s // 5, x + s // 2, y + s // 2 - 1], fill=_shade(rgb, 1.5))
    else:  # cylinder
        draw.rectangle([x, y + d // 2 + 1, x + s, y + s - d // 2], fill=rgb)
        draw.ellipse([x, y + s - d, x + s, y + s], fill=rgb)
        draw.ellipse([x, y, x + s, y + d + 1], fill=_shade(rgb, 1.35))


def render(cells: list[tuple[str, str] | None], rng: random.Random) -> Image.Image:
    """Render a row-major list of GRID*GRID cells, each (color, shape) or None."""
    img = Image.new("RGB", (GRID * CELL, GRID * CELL), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(cells):
        if obj is None:
            continue
        size = rng.randint(CELL * 5 // 8, CELL * 3 // 4)
        slack = CELL - size
        x = (i % GRID) * CELL + rng.randint(1, slack - 1)
        y = (i // GRID) * CELL + rng.randint(1, slack - 1)
        _draw_object(draw, x, y, size, obj[1], COLORS[obj[0]])
    return img


def _describe(color: str | None, shape: str | None) -> str:
    """'red cubes', 'spheres', 'blue objects'."""
    return f"{color + ' ' if color else ''}{shape + 's' if shape else 'objects'}"


def _matches(obj: tuple[str, str], color: str | None, shape: str | None) -> bool:
    return (color is None or obj[0] == color) and (shape is None or obj[1] == shape)


def _pick_target(rng: random.Random, objects: list[tuple[str, str]], family: str) -> tuple[str | None, str | None]:
    # Three times in four, subtract something that is present, so most answers are not the plain total.
    color, shape = rng.choice(objects) if rng.random() < 0.75 else (rng.choice(list(COLORS)), rng.choice(SHAPES))
    return {"color_shape": (color, shape), "color": (color, None), "shape": (None, shape)}[family]


def make_item(rng: random.Random, item_id: str, min_objects: int = 3, max_objects: int = 7) -> tuple[QAItem, Image.Image]:
    """One question over one random scene, with its teacher rationale."""
    n = rng.randint(min_objects, max_objects)
    slots = rng.sample(range(GRID * GRID), n)
    cells: list[tuple[str, str] | None] = [None] * (GRID * GRID)
    for s in slots:
        cells[s] = (rng.choice(list(COLORS)), rng.choice(SHAPES))
    objects = [c for c in cells if c is not None]

    family = rng.choice(["color_shape", "color", "shape"])
    color, shape = _pick_target(rng, objects, family)
    removed = sum(_matches(o, color, shape) for o in objects)
    answer = n - removed
    what = _describe(color, shape)
    question = f"Subtract all {what}. How many objects are left?"

    hits = [f"{c} {s}" for c, s in objects if _matches((c, s), color, shape)]
    matching = ", ".join(f"{i + 1} {h}" for i, h in enumerate(hits)) or "none"  # numbered: the count is the last
    rationale = (
        f"There are {n} objects.\n"
        f"{what[0].upper() + what[1:]}: {matching}.\n"
        f"{n} - {removed} = {answer}.\n"
        f"Answer: {answer}"
    )
    item = QAItem(
        id=item_id,
        question=question,
        answer=str(answer),
        answer_type="integer",
        image=f"{item_id}.png",
        context="Objects, row by row: " + ", ".join(f"{i + 1} {c} {s}" for i, (c, s) in enumerate(objects)) + ".",
        rationale=rationale,
        meta={"family": family, "key": f"{cells}|{question}", "n_objects": n},
    )
    return item, render(cells, rng)


def generate(n: int, seed: int, image_dir: Path, id_prefix: str) -> list[QAItem]:
    """n items, deterministic from seed; writes one PNG per item into image_dir."""
    image_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        item, img = make_item(rng, f"{id_prefix}{i:05d}")
        img.save(image_dir / item.image)
        items.append(item)
    return items
