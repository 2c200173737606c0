"""Static visual QA: one-step episodes over a list of QA items.

A dataset on disk is a folder with `<split>.jsonl` (one `QAItem` per line) and the image files the items
name by path relative to that folder. The synthetic generators write this format; loaders of the real
benchmarks convert to it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.episode import EpisodeEnv, NoTeacher, Observation
from envs.files import atomic_writer
from envs.scoring import ANSWER_FORMATS, parse_answer, score


@dataclass
class QAItem:
    id: str
    question: str
    answer: str  # gold answer, canonical string
    answer_type: str  # one of envs.scoring.ANSWER_TYPES
    image: str | None = None  # path relative to the dataset folder
    choices: list[str] | None = None  # options of a multiple-choice question, in letter order
    context: str | None = None  # the facts of the image as text
    rationale: str | None = None  # the teacher's solution, ending in "Answer: <answer>"
    meta: dict[str, Any] = field(default_factory=dict)


def write_items(items: list[QAItem], path: Path) -> None:
    """Write items as JSONL atomically (a crash never leaves a half-written dataset)."""
    with atomic_writer(path) as f:
        for item in items:
            f.write(json.dumps(dataclasses.asdict(item)) + "\n")


class DataError(RuntimeError):
    """A dataset file is missing, truncated, not UTF-8 or malformed. The message names the file (and the line or
    item) and says what to fix; run.py prints it as one line and exits non-zero."""


_FIELDS = {f.name for f in dataclasses.fields(QAItem)}


def read_items(path: Path) -> list[QAItem]:
    """The items of a QA dataset file; a bad file raises DataError naming it, the line and what is wrong. Each item's
    image must exist (beside the file), so a half-copied dataset stops here, not hours later inside generation."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"QA dataset file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); the file is corrupt: generate or "
                        "download it again") from e
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON on line {n} column {e.colno} ({e.msg}); the file is truncated or "
                            "corrupt: generate or download it again") from e
        missing = {"id", "question", "answer", "answer_type"} - set(row) if isinstance(row, dict) else {"all"}
        if missing or not set(row) <= _FIELDS:
            raise DataError(f"{path}: line {n} is not a QA item (missing {sorted(missing)}, unknown "
                            f"{sorted(set(row) - _FIELDS) if isinstance(row, dict) else []})")
        item = QAItem(**row)
        if item.image and not (path.parent / item.image).is_file():
            raise DataError(f"{path}: image {path.parent / item.image} of item {item.id} is missing; the dataset "
                            "is incomplete: generate or download it again")
        items.append(item)
    return items


class QAEnv(EpisodeEnv):
    """One-step episodes: the observation is a question (+ image, + optional text context); the action is
    the model's text; reward 1.0 when its final answer matches the gold answer, else 0.0."""

    def __init__(self, name: str, items: list[QAItem] | dict[str, QAItem], data_dir: str | Path,
                 text_context: bool, breakdown: tuple[str, ...]):
        """Images are paths relative to `data_dir` (or absolute); `breakdown` names the `meta` keys that
        evaluation also reports accuracy by (e.g. M3CoT's domain and topic)."""
        if not items:
            raise ValueError(f"QA environment {name!r} has no items")
        self.name = name
        self.items = items if isinstance(items, dict) else {item.id: item for item in items}
        self.data_dir = Path(data_dir)
        self.text_context = text_context
        self.breakdown = tuple(breakdown)
        self._item: QAItem | None = None

    def episodes(self) -> list[tuple[str, int]]:
        return [(item_id, 0) for item_id in self.items]

    def observation(self, item: QAItem) -> Observation:
        return Observation(
            text=item.question,
            choices=item.choices,
            images=[str(self.data_dir / item.image)] if item.image else [],
            context=item.context if self.text_context else None,
            answer_format=ANSWER_FORMATS[item.answer_type],
            task_id=item.id,
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        if task_id not in self.items:
            raise KeyError(f"unknown task_id {task_id!r} for env {self.name!r}")
        self._item = self.items[task_id]
        return self.observation(self._item), {"gold": self._item.answer}

    def step(self, action: str):
        if self._item is None:
            raise RuntimeError("call reset() before step()")
        item, self._item = self._item, None
        # several gold answers (ChartQA's hub copy) score as the best of them, as the official metric does
        parsed, reward = score(action, item.meta.get("answers") or item.answer, item.answer_type, item.choices)
        info = {"parsed": parsed, "gold": item.answer}
        return None, reward, True, False, info

    def parse(self, text: str) -> str | None:
        if self._item is None:
            raise RuntimeError("call reset() before parse()")
        return parse_answer(text, self._item.answer_type, self._item.choices)

    def teacher(self) -> str:
        if self._item is None:
            raise RuntimeError("call reset() before teacher()")
        if not self._item.rationale:
            raise NoTeacher(f"item {self._item.id} has no teacher rationale")
        return self._item.rationale

    def groups(self, task_id: str) -> dict[str, str]:
        meta = self.items[task_id].meta
        return {key: str(meta[key]) for key in self.breakdown if meta.get(key) not in (None, "")}
