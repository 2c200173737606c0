"""Import external teacher chain-of-thought (R3V's GPT-4o warm-up files, or plain JSON Lines) onto items.

Rows are matched to items by id when they carry one, else by image file name, and by question text where
one image has several questions (ChartQA, CLEVR-Math): the row's prompt must start with the item's question
(the warm-up prompts are question + options + instruction).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from envs.benchmarks.common import DataError, read_records
from envs.qa import QAItem
from envs.scoring import score


@dataclass
class TeacherImport:
    rationales: dict[str, str]  # item id -> the teacher's solution
    matched: int = 0  # rows attached to at least one item
    unmatched: int = 0  # rows naming no loaded item (another split, or a question not in the data)
    wrong: int = 0  # matched rows whose final answer does not score against the item's gold answer
    dropped: int = 0  # wrong rows left out because drop_wrong was set
    duplicates: int = 0  # rows for an item that already had a rationale (the first one is kept)
    unmatched_rows: list[int] = field(default_factory=list)  # indices of the unmatched rows


def _text(s: str) -> str:
    return " ".join(s.split()).casefold()


def _row(raw: dict, file: Path, n: int) -> dict:
    """A row as {"id", "image", "question", "rationale"}, from either supported format."""
    if "conversations" in raw:  # R3V warm-up: [{"from": "user", ...}, {"from": "assistant", ...}]
        turns = raw["conversations"]
        user = next((t.get("value") for t in turns if t.get("from") in ("user", "human")), None)
        answer = next((t.get("value") for t in turns if t.get("from") in ("assistant", "gpt")), None)
        raw = {"image": raw.get("image"), "question": user, "rationale": answer}
    if not raw.get("rationale") or not (raw.get("id") or raw.get("image")):
        raise DataError(f"{file}: row {n} needs a rationale and an id or an image")
    image = raw.get("image")
    return {"id": raw.get("id"), "image": Path(str(image).replace("\\", "/")).name if image else None,
            "question": raw.get("question"), "rationale": str(raw["rationale"])}


def read_teacher(path: str | Path) -> list[dict]:
    """Rows of a warm-up JSON list or a JSON Lines file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"teacher file {file} does not exist")
    return [_row(raw, file, n) for n, raw in enumerate(read_records(file))]


def _targets(row: dict, by_id: dict[str, QAItem], by_image: dict[str, list[QAItem]]) -> list[QAItem]:
    if row["id"] is not None and str(row["id"]) in by_id:
        return [by_id[str(row["id"])]]
    candidates = by_image.get(row["image"] or "", [])
    if not row["question"]:
        return candidates if len(candidates) == 1 else []
    prompt = _text(row["question"])
    # The prompt continues after the question with a space (after whitespace folding) or ends there.
    hits = [it for it in candidates if prompt == _text(it.question) or prompt.startswith(_text(it.question) + " ")]
    longest = max((len(it.question) for it in hits), default=0)
    return [it for it in hits if len(it.question) == longest]  # several: the same question asked twice


def match_teacher(rows: list[dict], items: list[QAItem], drop_wrong: bool = False) -> TeacherImport:
    """Attach rows to items. A wrong teacher answer is kept (R3V used its warm-up files as they are) but
    counted; `drop_wrong` leaves such rows out."""
    by_id = {it.id: it for it in items}
    by_image: dict[str, list[QAItem]] = defaultdict(list)
    for it in items:
        if it.image:
            by_image[Path(it.image).name].append(it)
    result = TeacherImport(rationales={})
    for n, row in enumerate(rows):
        targets = _targets(row, by_id, by_image)
        if not targets:
            result.unmatched += 1
            result.unmatched_rows.append(n)
            continue
        result.matched += 1
        if not any(score(row["rationale"], it.answer, it.answer_type, it.choices)[1] for it in targets):
            result.wrong += 1
            if drop_wrong:
                result.dropped += 1
                continue
        for it in targets:
            if it.id in result.rationales:
                result.duplicates += 1
            else:
                result.rationales[it.id] = row["rationale"]
    return result


def import_teacher(path: str | Path, items: list[QAItem], drop_wrong: bool = False) -> TeacherImport:
    """Read a teacher file and match it to items; set `item.rationale = result.rationales[item.id]` to use."""
    return match_teacher(read_teacher(path), items, drop_wrong)
