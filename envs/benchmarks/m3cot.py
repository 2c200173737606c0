"""M3CoT (multi-domain multimodal chain of thought, multiple choice): parquet export, JSON Lines, or hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from envs.benchmarks.common import (
    cached_image, check_items, field, find_parquet, hub_rows, letter, no_data, parquet_rows, read_records,
    split_names,
)
from envs.qa import QAItem

NAME = "m3cot"
HUB_ID = "LightChen2333/M3CoT"
LAYOUT = """\
either a parquet export of the hub dataset LightChen2333/M3CoT:
  data/train-*.parquet, data/validation-*.parquet, data/test-*.parquet
                            columns id, category, image_id, question, choices, context, answer (a letter),
                            rationale, split, image ({"bytes", "path"}), domain, topic
or the GitHub release's JSON Lines: train.jsonl, dev.jsonl, test.jsonl with "image" a path to the file
or env.path=LightChen2333/M3CoT on a machine that can reach the hub"""
PUBLISHED = "hub LightChen2333/M3CoT (GitHub github.com/LightChen233/M3CoT)"
SPLITS = ("train", "test")  # also "validation" (the release's "dev")


def _items(rows: Iterable[dict], root: Path, split: str, cache: Path | None, file: str) -> list[QAItem]:
    items = []
    for i, row in enumerate(rows):
        item_id = str(row.get("id") or f"{split}-{i}")
        choices = [str(c) for c in field(row, "choices", file, item_id)]
        question = str(field(row, "question", file, item_id))
        context = (row.get("context") or "").strip()
        image = cached_image(field(row, "image", file, item_id), root, cache, item_id, file, item_id)
        items.append(QAItem(
            id=item_id,
            # M3CoT's context is part of the problem ("Select the best answer."), not a description of the
            # image, so it joins the question rather than QAItem.context (shown only in text-context mode).
            question=f"{context}\n{question}" if context else question,
            answer=(answer := letter(field(row, "answer", file, item_id), len(choices), file, item_id)),
            answer_type="m3cot",
            # the dataset's own rationale, as a teacher chain of thought (warmup.teacher_file overrides it)
            rationale=f"{row['rationale'].strip()}\nAnswer: {answer}" if row.get("rationale") else None,
            image=image,
            choices=choices,
            meta={"benchmark": NAME, "split": split, "domain": row.get("domain"), "topic": row.get("topic"),
                  "category": row.get("category"), "image_id": row.get("image_id")},
        ))
    return check_items(items, file)


def load(path: str | Path, split: str, image_cache_dir: Path | None = None) -> list[QAItem]:
    """Items of one split ("train", "validation"/"dev", "test"), with `meta` domain, topic and category.
    A hub id instead of a folder reads the dataset with `datasets.load_dataset(id)`."""
    cache = image_cache_dir / NAME if image_cache_dir is not None else None
    if not Path(path).is_dir():  # a hub dataset id (load_items checked the form)
        return _items(hub_rows(str(path), split, None, cache), Path("."), split, cache, str(path))
    root = Path(path)
    for name in split_names(split):
        for file in (root / f"{name}.jsonl", root / "data" / f"{name}.jsonl"):
            if file.is_file():
                return _items(read_records(file), file.parent, split, cache, str(file))
    files = find_parquet(root, split)
    if not files:
        raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no {split} parquet files and no {split}.jsonl")
    label = ", ".join(str(f) for f in files)
    return _items(parquet_rows(files, cache), root, split, cache, label)
