"""GeoQA (geometry diagrams, 4-way multiple choice) in the layout of the R3V Qwen2-VL follow-up."""

from __future__ import annotations

from pathlib import Path

from envs.benchmarks.common import check_items, field, image_file, letter, no_data, read_records, split_names
from envs.qa import QAItem

NAME = "geoqa"
FOLDER = "geoQA-data"
LAYOUT = """\
geoQA-data/                 (env.path may be this folder or its parent)
  train.jsonl, test.jsonl   each ONE JSON array despite the extension (JSON Lines also accepted) of
                            {"id": "train-0", "question": "...", "choices": [4 values], "answer": "A".."D",
                             "image": "<file name or path, may use backslashes>"}
  images/<id>.png"""
PUBLISHED = ("github.com/Liac-li/MM-self-improve-qwen2vl (README: data at box.nju.edu.cn/d/52900df37580459daaa0, "
             "extract to geoQA-data); original GeoQA: github.com/chen-judge/GeoQA")
SPLITS = ("train", "test")


def root_of(path: Path) -> Path:
    """The geoQA-data folder: `path` itself or its child of that name."""
    return path / FOLDER if (path / FOLDER).is_dir() else path


def load(path: str | Path, split: str, image_cache_dir: Path | None = None) -> list[QAItem]:
    """Items of one split; `image` is an absolute path, `answer` a letter, `choices` the 4 values as text."""
    root = root_of(Path(path))
    files = [root / f"{name}{ext}" for name in split_names(split) for ext in (".jsonl", ".json")]
    file = next((f for f in files if f.is_file()), None)
    if file is None:
        raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no {split}.jsonl")
    items = []
    for i, row in enumerate(read_records(file)):
        item_id = str(row.get("id") or f"{split}-{i}")
        choices = [str(c) for c in field(row, "choices", file, item_id)]
        answer = letter(field(row, "answer", file, item_id), len(choices), file, item_id)
        # The follow-up's code reads basename(image.replace('\\', '/')): paths were written on Windows.
        name = Path(str(row.get("image") or f"{item_id}.png").replace("\\", "/")).name
        items.append(QAItem(
            id=item_id,
            question=str(field(row, "question", file, item_id)),
            answer=answer,
            answer_type="choice",
            image=image_file(root / "images" / name, file, item_id),
            choices=choices,
            meta={"benchmark": NAME, "split": split},
        ))
    return check_items(items, file)
