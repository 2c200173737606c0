"""What the table and chart generators share: the font, and the loop that turns drawn facts into items."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageFont

from envs.qa import QAItem


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass
class Drawn:
    """One question drawn from a seeded generator, before it becomes an item."""

    family: str
    question: str
    answer: str
    answer_type: str
    choices: list[str] | None
    context: str  # the image's facts as text
    steps: list[str]  # the teacher's solution steps
    render: Callable[[], Image.Image]  # drawn only for items that are kept: it may use the generator's rng


def generate_items(n: int, seed: int, image_dir: Path, id_prefix: str,
                   draw: Callable[[random.Random], Drawn]) -> list[QAItem]:
    """n items with distinct content, deterministic from seed; writes f"{id}.png" per item into image_dir."""
    rng = random.Random(seed)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    items: list[QAItem] = []
    seen: set[str] = set()
    while len(items) < n:
        d = draw(rng)
        key = hashlib.sha1(f"{d.context}\n{d.question}".encode()).hexdigest()[:16]
        if key in seen:  # identical content twice in one batch would leak between the caller's splits
            continue
        seen.add(key)
        item_id = f"{id_prefix}{len(items):05d}"
        d.render().save(image_dir / f"{item_id}.png")
        rationale = "\n".join(["Solution:"] + [f"{i}. {s}" for i, s in enumerate(d.steps, 1)] + [f"Answer: {d.answer}"])
        items.append(QAItem(id=item_id, question=d.question, answer=d.answer, answer_type=d.answer_type,
                            image=f"{item_id}.png", choices=d.choices, context=d.context, rationale=rationale,
                            meta={"key": key, "family": d.family}))
    return items
