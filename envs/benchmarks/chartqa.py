"""ChartQA (charts, free-form answers, relaxed accuracy) in the layout of its GitHub release."""

from __future__ import annotations

from pathlib import Path

from envs.benchmarks.common import DataError, check_items, field, image_file, no_data, read_json, split_names
from envs.qa import QAItem

NAME = "chartqa"
FOLDER = "ChartQA Dataset"
LAYOUT = """\
ChartQA Dataset/            (env.path may be this folder or its parent)
  train/train_human.json, train/train_augmented.json, train/png/<imgname>
  val/val_human.json, ...,  val/png/
  test/test_human.json, ..., test/png/
                            each JSON a list of {"imgname": "41699051005347.png", "query": "...", "label": "14"}"""
PUBLISHED = "github.com/vis-nlp/ChartQA (ChartQA Dataset/); also hub HuggingFaceM4/ChartQA"
SPLITS = ("train", "test")  # R3V trains and tests on the human-written questions only


def root_of(path: Path) -> Path:
    """The "ChartQA Dataset" folder: `path` itself or its child of that name."""
    return path / FOLDER if (path / FOLDER).is_dir() else path


def load(path: str | Path, split: str, image_cache_dir: Path | None = None,
         augmented: bool = False) -> list[QAItem]:
    """Items of one split: the human questions, plus the machine-generated ones when `augmented`."""
    root = root_of(Path(path))
    name = next((n for n in split_names(split) if (root / n / f"{n}_human.json").is_file()), None)
    if name is None:
        raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no {split}/{split}_human.json")
    items = []
    for source in ("human", "augmented") if augmented else ("human",):
        file = root / name / f"{name}_{source}.json"
        if not file.is_file():
            raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no {name}/{name}_{source}.json")
        rows = read_json(file)
        if not isinstance(rows, list):
            raise DataError(f"{file}: expected a JSON list")
        for i, row in enumerate(rows):
            item_id = f"{name}-{source}-{i}"  # the files carry no id; one image has several questions
            label = field(row, "label", file, item_id)
            labels = [str(x) for x in label] if isinstance(label, list) else [str(label)]
            meta = {"benchmark": NAME, "split": split, "source": source}
            if len(labels) > 1:  # the hub copy lists several; the official metric takes the max over them
                meta["answers"] = labels
            items.append(QAItem(
                id=item_id,
                question=str(field(row, "query", file, item_id)),
                answer=labels[0],
                answer_type="relaxed",
                image=image_file(root / name / "png" / str(field(row, "imgname", file, item_id)), file, item_id),
                meta=meta,
            ))
    return check_items(items, root / name)
