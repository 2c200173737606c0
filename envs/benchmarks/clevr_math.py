"""CLEVR-Math (count after adding/removing objects): R3V's JSON files, or a parquet export of the hub set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from envs.benchmarks.common import (
    DataError, cached_image, check_items, field, find_parquet, hub_rows, image_file, no_data, parquet_rows,
    read_records, split_names,
)
from envs.qa import QAItem

NAME = "clevr_math"
LAYOUT = """\
either R3V's files:
  clevr_train.json, clevr_test.json   lists of {"filename": "CLEVR_train_000001.png", "question", "answer"}
  clevr_math_imgs/<filename>
or a parquet export of dali-does/clevr-math (config "general" or "multihop"):
  [<config>/]<split>-00000-of-0000N.parquet  (or <config>/<split>/0000.parquet), split train/validation/test,
                            columns template, id (the CLEVR image file), question, image ({"bytes", "path"}),
                            label (int)"""
PUBLISHED = ("hub dali-does/clevr-math (a loading script: export it to parquet, datasets>=4 refuses scripts); "
             "R3V's copy: box.nju.edu.cn/f/176938c3b84444718588")
SPLITS = ("train", "test")


def _item(item_id: str, question: Any, label: Any, image: str, template: Any, split: str,
          file: Any) -> QAItem:
    try:  # labels are ints (parquet) or digit strings (R3V's JSON)
        answer = str(int(str(label).strip()))
    except ValueError:
        raise DataError(f"{file}: item {item_id} has answer {label!r}, not a whole number") from None
    return QAItem(id=item_id, question=str(question), answer=answer, answer_type="integer", image=image,
                  meta={"benchmark": NAME, "split": split, "template": template})


def _from_rows(rows: Iterable[dict], root: Path, split: str, prefix: str, cache: Path | None,
               file: str) -> list[QAItem]:
    items = []
    for i, row in enumerate(rows):
        item_id = f"{prefix}{split}-{i}"  # the row's "id" is its CLEVR image file, shared by several questions
        image_name = str(row.get("id") or item_id)  # one cached file per CLEVR image, whatever its questions
        image = cached_image(field(row, "image", file, item_id), root, cache, image_name, file, item_id)
        items.append(_item(item_id, field(row, "question", file, item_id), field(row, "label", file, item_id),
                           image, row.get("template"), split, file))
    return items


def load(path: str | Path, split: str, image_cache_dir: Path | None = None,
         config: str = "general") -> list[QAItem]:
    """Items of one split, with `meta["template"]` (subtraction, addition, adversarial, ...) when known.
    A hub id instead of a folder reads the dataset with `datasets.load_dataset(id, config)`."""
    cache = image_cache_dir / NAME / config if image_cache_dir is not None else None
    prefix = "" if config == "general" else f"{config}-"
    if not Path(path).is_dir():  # a hub dataset id (load_items checked the form)
        return check_items(_from_rows(hub_rows(str(path), split, config, cache), Path("."), split, prefix,
                                      cache, str(path)), str(path))
    root = Path(path)
    r3v = next((root / f"clevr_{n}.json" for n in split_names(split) if (root / f"clevr_{n}.json").is_file()), None)
    if r3v is not None:
        items = []
        for i, row in enumerate(read_records(r3v)):
            item_id = f"{split}-{i}"
            name = str(field(row, "filename", r3v, item_id))
            items.append(_item(item_id, field(row, "question", r3v, item_id), field(row, "answer", r3v, item_id),
                               image_file(root / "clevr_math_imgs" / name, r3v, item_id), row.get("template"),
                               split, r3v))
        return check_items(items, r3v)
    files = find_parquet(root, split, config)
    if not files:
        raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no clevr_{split}.json and no {split} parquet files")
    label = ", ".join(str(f) for f in files)
    return check_items(_from_rows(parquet_rows(files, cache), root, split, prefix, cache, label), label)
