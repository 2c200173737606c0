"""TabMWP (math word problems over table images) in PromptPG's layout."""

from __future__ import annotations

from pathlib import Path

from envs.benchmarks.common import DataError, check_items, field, image_file, no_data, read_json, split_names
from envs.qa import QAItem

NAME = "tabmwp"
LAYOUT = """\
tabmwp/                     (env.path may be this folder, its parent, or a PromptPG checkout)
  problems_train.json, problems_test.json (also problems_dev.json, problems_test1k.json, problems_dev1k.json):
                            {"<pid>": {"question", "choices" (null or option texts), "answer", "unit",
                                       "table_title", "table", "ques_type", "ans_type", "grade", ...}}
  splits.json               optional: {"train": [pid, ...], ...}, used with a single problems.json
  tables/<pid>.png"""
PUBLISHED = "github.com/lupantech/PromptPG (data/tabmwp); R3V's copy: box.nju.edu.cn/f/eee16cb342a9438ea3bb"
# R3V tested on the full test split (problems_test.json, 7,686 problems: scripts/eval/tabmwp.sh in
# njucckevin/MM-Self-Improve), not PromptPG's test1k.
SPLITS = ("train", "test")
NUMERIC = ("integer_number", "decimal_number")


def root_of(path: Path) -> Path:
    """The folder holding problems_*.json: `path`, `path/tabmwp` or `path/data/tabmwp`."""
    for candidate in (path, path / "tabmwp", path / "data" / "tabmwp"):
        if any(candidate.glob("problems*.json")):
            return candidate
    return path


def _problems(root: Path, split: str, path: str | Path) -> tuple[Path, dict]:
    for name in split_names(split):
        if (root / f"problems_{name}.json").is_file():
            file = root / f"problems_{name}.json"
            return file, read_json(file)
    if (root / "problems.json").is_file() and (root / "splits.json").is_file():
        splits = read_json(root / "splits.json")
        name = next((n for n in split_names(split) if n in splits), None)
        if name is not None:
            problems = read_json(root / "problems.json")
            missing = [pid for pid in splits[name] if str(pid) not in problems]
            if missing:
                raise DataError(f"{root / 'problems.json'}: problem {missing[0]} of split {name!r} in "
                                "splits.json is missing")
            return root / "problems.json", {str(pid): problems[str(pid)] for pid in splits[name]}
    raise no_data(NAME, LAYOUT, PUBLISHED, path, f"no problems_{split}.json")


def load(path: str | Path, split: str, image_cache_dir: Path | None = None) -> list[QAItem]:
    """Items of one split. Multiple choice: gold = the option TEXT, scored by "tabmwp_choice"; free text:
    "number" (all TabMWP free-text answers are numbers) or "text". The unit joins the question as in R3V."""
    root = root_of(Path(path))
    file, problems = _problems(root, split, path)
    if not isinstance(problems, dict):
        raise DataError(f"{file}: expected a JSON object keyed by problem id")
    items = []
    for pid, p in problems.items():
        if not isinstance(p, dict):
            raise DataError(f"{file}: problem {pid} is not a JSON object")
        answer = str(field(p, "answer", file, pid))
        question = str(field(p, "question", file, pid))
        unit = p.get("unit")
        if unit:  # R3V and PromptPG: f"{question} (Unit: {unit})"
            question = f"{question} (Unit: {unit})"
        choices = [str(c) for c in p["choices"]] if p.get("choices") else None
        if choices:
            answer_type = "tabmwp_choice"
        else:
            answer_type = "number" if p.get("ans_type", "integer_number") in NUMERIC else "text"
        table = p.get("table")
        title = p.get("table_title")
        items.append(QAItem(
            id=str(pid),
            question=question,
            answer=answer,
            answer_type=answer_type,
            image=image_file(root / "tables" / f"{pid}.png", file, pid),
            choices=choices,
            context=f"[TITLE]: {title}\n{table}" if title and table else table,  # PromptPG's table text
            # the dataset's own worked solution, as a teacher chain of thought (warmup.teacher_file overrides it)
            rationale=f"{p['solution'].strip()}\nAnswer: {answer}" if p.get("solution") else None,
            meta={"benchmark": NAME, "split": split, "ques_type": p.get("ques_type"),
                  "ans_type": p.get("ans_type"), "grade": p.get("grade"), "unit": unit},
        ))
    return check_items(items, file)
