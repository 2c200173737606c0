"""Benchmark loaders on small fixtures written in each benchmark's real layout, and the teacher-CoT import
on rows of the real R3V warm-up files."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from envs.benchmarks import BENCHMARKS, DataError, import_teacher, load_items, match_teacher, read_teacher
from envs.benchmarks.common import looks_like_hub_id
from envs.qa import QAItem
from envs.scoring import ANSWER_TYPES, final_answer, parse_answer, score

WARMUP = Path(__file__).resolve().parents[2] / "shared" / "data" / "r3v_warmup"


def png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 100, 200)).save(path)
    return path


def png_bytes(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def check_common(items: list[QAItem], answer_types: set[str]) -> None:
    assert len({it.id for it in items}) == len(items)
    for it in items:
        assert it.answer_type in answer_types and it.answer_type in ANSWER_TYPES
        assert Path(it.image).is_absolute() and Path(it.image).is_file()
        # The gold answer written as the model would write it scores full marks.
        gold = it.answer if it.answer_type != "tabmwp_choice" else "ABCDEF"[it.choices.index(it.answer)]
        assert score(f"Solution: ...\nAnswer: {gold}", it.answer, it.answer_type, it.choices)[1] == 1.0


# --- GeoQA -------------------------------------------------------------------------------------------------


def geoqa_row(i: int, split: str, answer: str = "B") -> dict:
    return {"id": f"{split}-{i}", "question": f"Calculation: As shown in the figure , angle {i} is ()",
            "choices": [30.0, 40.0, 2.23606797749979, 60.0], "answer": answer,
            "image": f"D:\\geo\\images\\{split}-{i}.png"}  # written on Windows: backslashes


@pytest.fixture()
def geoqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "geoQA-data"
    for split, n in (("train", 3), ("test", 2)):
        rows = [geoqa_row(i, split) for i in range(n)]
        for i in range(n):
            png(root / "images" / f"{split}-{i}.png", i)
        if split == "train":  # one JSON array despite the extension
            (root / "train.jsonl").write_text(json.dumps(rows))
        else:  # real JSON Lines are accepted too
            (root / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_geoqa_loads_from_folder_or_parent(geoqa_dir: Path):
    train = load_items("geoqa", geoqa_dir.parent, "train")
    test = load_items("geoqa", geoqa_dir, "test")
    assert (len(train), len(test)) == (3, 2)
    check_common(train + test, {"choice"})
    item = train[1]
    assert item.id == "train-1" and item.answer == "B"
    assert item.choices == ["30.0", "40.0", "2.23606797749979", "60.0"]
    assert item.image == str((geoqa_dir / "images" / "train-1.png").resolve())
    assert score("Answer: (C)", item.answer, item.answer_type, item.choices)[1] == 0.0


def test_loaded_items_play_in_qa_env(geoqa_dir: Path, tmp_path: Path):
    from envs.qa import QAEnv

    items = load_items("geoqa", geoqa_dir, "test")
    env = QAEnv("geoqa", items, data_dir=tmp_path / "elsewhere", text_context=False, breakdown=())  # absolute images ignore data_dir
    obs, info = env.reset(options={"task_id": "test-0"})
    assert obs.images == [items[0].image] and obs.answer_format == "Answer: <the option's letter>"
    assert obs.choices == ["30.0", "40.0", "2.23606797749979", "60.0"] and info["gold"] == "B"
    from omegaconf import OmegaConf

    from agent.prompts import Prompts

    text = Prompts(**OmegaConf.load(ROOT / "conf" / "prompts" / "geoqa.yaml")).cot_prompt(obs)[0]["content"][-1]["text"]
    assert text.startswith(f"{items[0].question}\nChoices:\n(A) 30.0\n(B) 40.0\n(C) 2.23606797749979\n(D) 60.0\n")
    assert env.step("The angle is 40.\nAnswer: (B)")[1] == 1.0


def test_geoqa_bad_rows_name_file_and_item(geoqa_dir: Path):
    (geoqa_dir / "images" / "train-2.png").unlink()
    with pytest.raises(DataError, match=r"train\.jsonl.*train-2.*missing"):
        load_items("geoqa", geoqa_dir, "train")
    rows = [geoqa_row(0, "test"), {**geoqa_row(1, "test"), "answer": None}]
    (geoqa_dir / "test.jsonl").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"test\.jsonl: item test-1 has no 'answer'"):
        load_items("geoqa", geoqa_dir, "test")
    (geoqa_dir / "test.jsonl").write_text(json.dumps([{**geoqa_row(0, "test"), "answer": "E"}]))
    with pytest.raises(DataError, match="test-0 has answer 'E', not one of its 4 option letters"):
        load_items("geoqa", geoqa_dir, "test")
    text = json.dumps([geoqa_row(0, "test"), geoqa_row(1, "test")])
    (geoqa_dir / "test.jsonl").write_text(text[: len(text) // 2])  # truncated download
    with pytest.raises(DataError, match=r"test\.jsonl: invalid JSON.*truncated"):
        load_items("geoqa", geoqa_dir, "test")


# --- TabMWP ------------------------------------------------------------------------------------------------

TAB_PROBLEMS = {
    "16": {"question": "What is the mean of the numbers?", "choices": None, "answer": "84", "unit": None,
           "table_title": "Coin collections", "table": "Name | Number of coins\nBraden | 76",
           "ques_type": "free_text", "ans_type": "integer_number", "grade": 5, "split": "test"},
    "38": {"question": "How much would Ann spend?", "choices": None, "answer": "4,656.50", "unit": "$",
           "table_title": None, "table": "item | price", "ques_type": "free_text",
           "ans_type": "decimal_number", "grade": 6, "split": "test"},
    "77": {"question": "Look at the table. Then answer the question. At a price of $1,735, is there a shortage "
                       "or a surplus?", "choices": ["shortage", "surplus"], "answer": "surplus", "unit": None,
           "table_title": None, "table": "Price | Demand", "ques_type": "multi_choice",
           "ans_type": "extractive_text", "grade": 5, "split": "test"},
    "90": {"question": "What fraction of the votes were for pizza?", "choices": None, "answer": "3/10",
           "unit": None, "table_title": None, "table": "Food | Votes", "ques_type": "free_text",
           "ans_type": "decimal_number", "grade": 7, "split": "test"},
}


@pytest.fixture()
def tabmwp_dir(tmp_path: Path) -> Path:
    root = tmp_path / "PromptPG" / "data" / "tabmwp"
    root.mkdir(parents=True)
    (root / "problems_test.json").write_text(json.dumps(TAB_PROBLEMS))
    train = {"5": {**TAB_PROBLEMS["16"], "split": "train", "solution": "Read the number of coins for Braden."},
             "6": {**TAB_PROBLEMS["77"], "split": "train"}}  # a problem without a solution: no teacher CoT
    (root / "problems_train.json").write_text(json.dumps(train))
    for pid in [*TAB_PROBLEMS, "5", "6"]:
        png(root / "tables" / f"{pid}.png")
    return root


def test_tabmwp_items_types_and_meta(tabmwp_dir: Path):
    test = load_items("tabmwp", tabmwp_dir.parents[1], "test")  # a PromptPG checkout works too
    assert len(test) == 4 and len(load_items("tabmwp", tabmwp_dir, "train")) == 2
    check_common(test, {"number", "tabmwp_choice"})
    by_id = {it.id: it for it in test}
    assert by_id["38"].question == "How much would Ann spend? (Unit: $)"  # the unit joins the question
    assert by_id["77"].choices == ["shortage", "surplus"] and by_id["77"].answer == "surplus"
    assert by_id["16"].context == "[TITLE]: Coin collections\nName | Number of coins\nBraden | 76"
    assert {k: by_id["77"].meta[k] for k in ("ques_type", "ans_type")} == {
        "ques_type": "multi_choice", "ans_type": "extractive_text"}
    assert score("Answer: $4,656.5", by_id["38"].answer, "number")[1] == 1.0
    assert score("Answer: 0.3", by_id["90"].answer, "number")[1] == 1.0
    assert score("Answer: surplus", by_id["77"].answer, "tabmwp_choice", by_id["77"].choices)[1] == 1.0
    assert score("Answer: shortage", by_id["77"].answer, "tabmwp_choice", by_id["77"].choices)[1] == 0.0


def test_tabmwp_combined_problems_with_splits_json(tabmwp_dir: Path):
    os.rename(tabmwp_dir / "problems_test.json", tabmwp_dir / "problems.json")
    (tabmwp_dir / "splits.json").write_text(json.dumps({"test1k": [16, 77]}))
    assert [it.id for it in load_items("tabmwp", tabmwp_dir, "test1k")] == ["16", "77"]
    (tabmwp_dir / "splits.json").write_text(json.dumps({"test1k": [16, 123]}))
    with pytest.raises(DataError, match="problem 123 of split 'test1k'"):
        load_items("tabmwp", tabmwp_dir, "test1k")


def test_tabmwp_bad_rows(tabmwp_dir: Path):
    (tabmwp_dir / "tables" / "77.png").unlink()
    with pytest.raises(DataError, match=r"problems_test\.json: image .*77\.png of item 77 is missing"):
        load_items("tabmwp", tabmwp_dir, "test")
    (tabmwp_dir / "problems_train.json").write_text(json.dumps({"5": {**TAB_PROBLEMS["16"], "answer": ""}}))
    with pytest.raises(DataError, match="item 5 has no 'answer'"):
        load_items("tabmwp", tabmwp_dir, "train")
    (tabmwp_dir / "problems_train.json").write_text(json.dumps({"5": {**TAB_PROBLEMS["16"], "answer": "n/a"}}))
    with pytest.raises(DataError, match="item 5 has answer 'n/a', which the 'number' scorer cannot read"):
        load_items("tabmwp", tabmwp_dir, "train")


# --- ChartQA -----------------------------------------------------------------------------------------------


def write_chartqa(root: Path, split: str, human: list[dict], augmented: list[dict] | None = None) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / f"{split}_human.json").write_text(json.dumps(human))
    (root / split / f"{split}_augmented.json").write_text(json.dumps(augmented or []))
    for row in human + (augmented or []):
        if not (root / split / "png" / row["imgname"]).exists():
            png(root / split / "png" / row["imgname"])


@pytest.fixture()
def chartqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ChartQA Dataset"
    human = [{"imgname": "41699051005347.png", "query": "What is the peak value?", "label": "14"},
             {"imgname": "41699051005347.png", "query": "Is the line rising?", "label": "Yes"},
             {"imgname": "multi_col_1.png", "query": "What share is green?", "label": "57%"}]
    write_chartqa(root, "train", human, [{"imgname": "aug_1.png", "query": "Which is larger?", "label": "A"}])
    write_chartqa(root, "test", human[:2])
    return root


def test_chartqa_human_by_default(chartqa_dir: Path):
    train = load_items("chartqa", chartqa_dir.parent, "train")
    assert len(train) == 3 and len(load_items("chartqa", chartqa_dir, "test")) == 2
    check_common(train, {"relaxed"})
    assert {it.meta["source"] for it in train} == {"human"}
    assert train[0].image == train[1].image  # one chart, two questions, two items
    assert score("Answer: 0.56", train[2].answer, "relaxed")[1] == 1.0  # "57%" reads as 0.57
    both = load_items("chartqa", chartqa_dir, "train", augmented=True)
    assert [it.meta["source"] for it in both] == ["human"] * 3 + ["augmented"]


def test_chartqa_bad_rows_and_label_lists(chartqa_dir: Path):
    write_chartqa(chartqa_dir, "val", [{"imgname": "v.png", "query": "Max?", "label": ["7", "7.0"]}])
    (item,) = load_items("chartqa", chartqa_dir, "validation")  # "validation" finds val/
    assert item.answer == "7" and item.meta["answers"] == ["7", "7.0"]
    write_chartqa(chartqa_dir, "val", [{"imgname": "v.png", "query": "Max?"}])
    with pytest.raises(DataError, match=r"val_human\.json: item val-human-0 has no 'label'"):
        load_items("chartqa", chartqa_dir, "val")
    (chartqa_dir / "test" / "png" / "41699051005347.png").unlink()
    with pytest.raises(DataError, match="test-human-0 is missing"):
        load_items("chartqa", chartqa_dir, "test")


# --- CLEVR-Math --------------------------------------------------------------------------------------------


def test_clevr_math_r3v_layout(tmp_path: Path):
    rows = [{"filename": "CLEVR_train_000001.png", "question": "Subtract all cubes. How many objects are left?",
             "answer": "3"},
            {"filename": "CLEVR_train_000001.png", "question": "Add 1 sphere. How many spheres exist?",
             "answer": 2}]
    (tmp_path / "clevr_train.json").write_text(json.dumps(rows))
    png(tmp_path / "clevr_math_imgs" / "CLEVR_train_000001.png")
    items = load_items("clevr_math", tmp_path, "train")
    check_common(items, {"integer"})
    assert [it.answer for it in items] == ["3", "2"] and items[0].image == items[1].image
    rows[1]["answer"] = "two or three"
    (tmp_path / "clevr_train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="train-1 has answer 'two or three', not a whole number"):
        load_items("clevr_math", tmp_path, "train")


def write_parquet(path: Path, rows: list[dict], image_column: str = "image") -> None:
    import datasets

    columns = {k: [r[k] for r in rows] for k in rows[0]}
    features = datasets.Dataset.from_dict({k: v for k, v in columns.items() if k != image_column}).features
    features[image_column] = datasets.Image()
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def clevr_rows(n: int, split: str) -> list[dict]:
    templates = ["subtraction", "addition", "adversarial", "subtraction-multihop"]
    return [{"template": templates[i % 4], "id": f"CLEVR_{split}_{i // 2:06d}.png",  # 2 questions per image
             "question": f"Subtract all cubes. How many objects are left? ({i})",
             "image": {"bytes": png_bytes(i // 2), "path": None}, "label": i % 7} for i in range(n)]


@pytest.fixture()
def clevr_parquet(tmp_path: Path) -> Path:
    root = tmp_path / "clevr-math"
    write_parquet(root / "general" / "test-00000-of-00001.parquet", clevr_rows(6, "val"))
    write_parquet(root / "general" / "train-00000-of-00001.parquet", clevr_rows(4, "train"))
    write_parquet(root / "multihop" / "test-00000-of-00001.parquet", clevr_rows(2, "val")[:1])
    return root


def test_clevr_math_parquet_with_embedded_images(clevr_parquet: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    test = load_items("clevr_math", clevr_parquet, "test", image_cache_dir=cache)
    assert len(test) == 6 and len(load_items("clevr_math", clevr_parquet, "train", cache)) == 4
    check_common(test, {"integer"})
    assert [it.meta["template"] for it in test[:3]] == ["subtraction", "addition", "adversarial"]
    assert [it.answer for it in test] == ["0", "1", "2", "3", "4", "5"]
    assert test[0].image == test[1].image != test[2].image  # one file per CLEVR image
    images = sorted((cache / "clevr_math" / "general").glob("CLEVR_val_*.png"))
    assert [p.name for p in images] == ["CLEVR_val_000000.png", "CLEVR_val_000001.png", "CLEVR_val_000002.png"]
    assert Image.open(images[1]).getpixel((0, 0)) == (1, 0, 0)
    stamp = images[0].stat().st_mtime_ns
    load_items("clevr_math", clevr_parquet, "test", image_cache_dir=cache)
    assert images[0].stat().st_mtime_ns == stamp  # written once, not again
    multihop = load_items("clevr_math", clevr_parquet, "test", cache, config="multihop")
    assert [it.id for it in multihop] == ["multihop-test-0"]
    with pytest.raises(DataError, match="embedded as bytes; pass an image cache folder"):
        load_items("clevr_math", clevr_parquet, "test")


def test_clevr_math_corrupt_parquet(clevr_parquet: Path, tmp_path: Path):
    shard = clevr_parquet / "general" / "test-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet: unreadable parquet"):
        load_items("clevr_math", clevr_parquet, "test", tmp_path / "cache")


# --- M3CoT -------------------------------------------------------------------------------------------------


def m3cot_rows(n: int, split: str) -> list[dict]:
    domains = [("science", "physics"), ("commonsense", "physical-commonsense"), ("mathematics", "algebra")]
    return [{"id": f"{domains[i % 3][1]}-{split}-{i}", "category": "cat", "image_id": f"img{i}",
             "question": f"What is shown? ({i})", "choices": ["a cat", "a black cat", "a dog"],
             "context": "Select the best answer." if i == 0 else "", "answer": "ABC"[i % 3],
             "rationale": "Look at the animal.", "split": split, "image": {"bytes": png_bytes(i), "path": None},
             "domain": domains[i % 3][0], "topic": domains[i % 3][1]} for i in range(n)]


@pytest.fixture()
def m3cot_dir(tmp_path: Path) -> Path:
    root = tmp_path / "M3CoT"
    for split, n in (("train", 4), ("validation", 2), ("test", 3)):
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", m3cot_rows(n, split))
    return root


def test_m3cot_parquet(m3cot_dir: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    sizes = {s: len(load_items("m3cot", m3cot_dir, s, cache)) for s in ("train", "validation", "dev", "test")}
    assert sizes == {"train": 4, "validation": 2, "dev": 2, "test": 3}
    test = load_items("m3cot", m3cot_dir, "test", cache)
    check_common(test, {"m3cot"})
    assert [it.answer for it in test] == ["A", "B", "C"]
    assert test[0].question == "Select the best answer.\nWhat is shown? (0)"  # the context joins the question
    assert (test[1].meta["domain"], test[1].meta["topic"]) == ("commonsense", "physical-commonsense")
    assert Path(test[2].image).name == "algebra-test-2.png"  # cached under the item id
    assert parse_answer("Reasoning.\nAnswer: a black cat", "m3cot", test[1].choices) == "B"


def test_m3cot_jsonl_layout(tmp_path: Path):
    rows = m3cot_rows(2, "dev")
    for r in rows:
        r["image"] = f"images/{r['id']}.png"
        png(tmp_path / r["image"])
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items = load_items("m3cot", tmp_path, "validation")
    check_common(items, {"m3cot"})
    rows[1]["answer"] = "D"
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"dev\.jsonl: item physical-commonsense-dev-1 has answer 'D'"):
        load_items("m3cot", tmp_path, "validation")


# --- Errors shared by all benchmarks -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_no_data_message_says_what_to_do(name: str, tmp_path: Path):
    bench = BENCHMARKS[name]
    for path in (tmp_path, tmp_path / "absent"):
        with pytest.raises(DataError) as e:
            load_items(name, path, bench.splits[1], tmp_path / "cache")
        message = str(e.value)
        assert "Expected layout:" in message and bench.layout.splitlines()[0].strip() in message
        assert bench.published in message and "env.path=DIR" in message


def test_table_and_unknown_benchmark():
    assert set(BENCHMARKS) == {"geoqa", "tabmwp", "chartqa", "clevr_math", "m3cot"}
    assert all(b.splits == ("train", "test") for b in BENCHMARKS.values())
    assert BENCHMARKS["m3cot"].breakdown == ("domain", "topic") and BENCHMARKS["m3cot"].hub
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_items("scienceqa", ".", "test")
    assert looks_like_hub_id("LightChen2333/M3CoT") and not looks_like_hub_id("/data/m3cot")
    assert not looks_like_hub_id("M3CoT")


def test_prompt_sets_are_complete_and_match_the_released_warmup_data():
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "prompts"
    keys = set(OmegaConf.load(conf / "default.yaml"))
    prompts = {name: OmegaConf.load(conf / f"{name}.yaml") for name in BENCHMARKS}
    assert all(set(p) == keys for p in prompts.values())
    # Verbatim against the released warm-up data, including the U+2019 apostrophe.
    rows = json.loads((WARMUP / "tabmwp_qwenvl_sft_gpt.json").read_text())
    endings = {r["conversations"][0]["value"].rsplit("\n", 1)[1] for r in rows}
    assert endings == {prompts["tabmwp"].cot.split("\n")[1], prompts["tabmwp"].cot_choice.split("\n")[1]}
    for name, file in (("chartqa", "chartqa"), ("clevr_math", "clevr")):
        rows = json.loads((WARMUP / f"{file}_qwenvl_sft_gpt.json").read_text())
        assert {r["conversations"][0]["value"].rsplit("\n", 1)[1] for r in rows} == {prompts[name].cot.split("\n")[1]}


# --- Teacher chain-of-thought import -----------------------------------------------------------------------


def warmup_rows(file: str, indices: list[int]) -> list[dict]:
    rows = json.loads((WARMUP / file).read_text())
    return [rows[i] for i in indices]


def test_teacher_import_chartqa_warmup(tmp_path: Path):
    picked = warmup_rows("chartqa_qwenvl_sft_gpt.json", list(range(18)) + [81, 84])  # 81, 84: one image
    others = warmup_rows("chartqa_qwenvl_sft_gpt.json", list(range(20, 25)))  # not in the fixture
    human = [{"imgname": r["image"], "query": r["conversations"][0]["value"].rsplit("\n", 1)[0],
              "label": final_answer(r["conversations"][1]["value"])} for r in picked]
    human[3]["label"] = "a wrong gold answer"
    # Items the teacher did not write for: other questions on the same charts.
    human += [{"imgname": picked[0]["image"], "query": "What is the title?", "label": "Sales"},
              {"imgname": picked[18]["image"], "query": "What size is the median", "label": "3"}]
    root = tmp_path / "ChartQA Dataset"
    write_chartqa(root, "train", human)
    items = load_items("chartqa", root, "train")
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps(picked + others))

    result = import_teacher(teacher, items)
    assert (result.matched, result.unmatched, result.wrong, result.duplicates) == (20, 5, 1, 0)
    assert result.unmatched_rows == list(range(20, 25))
    assert set(result.rationales) == {f"train-human-{i}" for i in range(20)}  # not the two extra items
    assert result.rationales["train-human-19"] == picked[19]["conversations"][1]["value"]
    assert result.rationales["train-human-18"] != result.rationales["train-human-19"]  # same image
    dropped = import_teacher(teacher, items, drop_wrong=True)
    assert "train-human-3" not in dropped.rationales and dropped.dropped == 1
    for item in items:
        if item.id in result.rationales and item.id != "train-human-3":
            assert score(result.rationales[item.id], item.answer, item.answer_type)[1] == 1.0


def test_teacher_import_tabmwp_letters_against_option_texts(tmp_path: Path):
    picked = warmup_rows("tabmwp_qwenvl_sft_gpt.json", list(range(12)))
    problems = {}
    for r in picked:
        prompt = r["conversations"][0]["value"].rsplit("\n", 1)[0]
        head, _, options = prompt.partition("\nOptions:\n")
        choices = [line[4:] for line in options.splitlines()] or None
        question, _, unit = head.partition(" (Unit: ")
        letter = final_answer(r["conversations"][1]["value"])
        answer = choices["ABCDEF".index(letter)] if choices else letter
        problems[Path(r["image"]).stem] = {"question": question, "choices": choices, "answer": answer,
                                           "unit": unit.rstrip(")") or None, "table": "t",
                                           "ques_type": "multi_choice" if choices else "free_text",
                                           "ans_type": "extractive_text" if choices else "decimal_number"}
    root = tmp_path / "tabmwp"
    root.mkdir()
    (root / "problems_train.json").write_text(json.dumps(problems))
    for pid in problems:
        png(root / "tables" / f"{pid}.png")
    items = load_items("tabmwp", root, "train")
    assert any(it.choices for it in items) and any(not it.choices for it in items)
    result = match_teacher(read_teacher(WARMUP / "tabmwp_qwenvl_sft_gpt.json"), items)
    assert (result.matched, result.wrong) == (12, 0) and result.unmatched == 1000 - 12


def test_teacher_import_jsonl_by_id_or_image(tmp_path: Path):
    items = [QAItem("q1", "How many cubes?", "3", "integer", image=str(tmp_path / "a.png")),
             QAItem("q2", "How many spheres?", "2", "integer", image=str(tmp_path / "a.png")),
             QAItem("q3", "How many cones?", "1", "integer", image=str(tmp_path / "b.png"))]
    rows = [{"id": "q1", "rationale": "1. Three cubes.\nAnswer: 3"},
            {"image": "a.png", "question": "How many spheres?\nThink step by step.", "rationale": "Answer: 2"},
            {"image": "b.png", "rationale": "Answer: 1"},  # one question on that image: no text needed
            {"image": "a.png", "rationale": "Answer: 3"},  # two questions on that image: ambiguous
            {"id": "q9", "rationale": "Answer: 5"}]
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("\n".join(json.dumps(r) for r in rows))
    result = import_teacher(teacher, items)
    assert result.rationales == {"q1": "1. Three cubes.\nAnswer: 3", "q2": "Answer: 2", "q3": "Answer: 1"}
    assert (result.matched, result.unmatched, result.unmatched_rows) == (3, 2, [3, 4])
    teacher.write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(DataError, match="row 0 needs a rationale"):
        import_teacher(teacher, items)


# --- The loop on each benchmark ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["model=tiny", "iterations=1", "env.max_new_tokens=8", "eval.ns=[1,2]", "sample.n=2",
            "train.batch_size=4", "eval.select_max_new_tokens=4"]
BREAKDOWN_ROWS = {"geoqa": set(), "tabmwp": {"ques_type", "ans_type"}, "chartqa": {"source"},
                  "clevr_math": {"template"}, "m3cot": {"domain", "topic"}}


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, fixture", [("geoqa", "geoqa_dir"), ("tabmwp", "tabmwp_dir"),
                                           ("chartqa", "chartqa_dir"), ("clevr_math", "clevr_parquet"),
                                           ("m3cot", "m3cot_dir")])
def test_the_loop_runs_on_each_benchmark(name, fixture, request, tmp_path):
    """`run.py env=<name> env.path=<fixture> model=tiny iterations=1`, in process: the metrics contract, the
    benchmark's own prompts, and rows per breakdown group."""
    from hydra import compose, initialize_config_dir

    from reflection.loop import selftrain

    data = request.getfixturevalue(fixture)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"env={name}", f"env.path={data}", *TINY_RUN,
                                                        f"run_dir={tmp_path / 'run'}"])
    assert cfg.prompts == compose_prompts(name)
    run_dir = selftrain(cfg)
    rows = rows_of(run_dir)
    for row in rows:
        assert {"iteration", "split", "metric", "value", "env", "model", "method", "seed"} <= row.keys()
        assert row["env"] == name and 0.0 <= row["value"] or row["metric"].endswith(("_examples", "seconds", "steps",
                                                                                        "tokens", "loss"))
    overall = {(r["iteration"], r["split"], r["metric"]) for r in rows if len(r) == 8}
    assert {(0, "test", "test@1"), (1, "test", "test@1"), (1, "test", "select@2"), (0, "train", "positives"),
            (1, "train", "sft_examples"), (0, "train", "qa_examples")} <= overall
    grouped = {k for r in rows if r["split"] != "run" for k in r
               if k not in ("iteration", "split", "metric", "value", "env", "model", "method", "seed")}
    assert grouped == BREAKDOWN_ROWS[name]
    assert {r["stage"] for r in rows if r["split"] == "run"} >= {"data", "train", "eval", "sample"}  # stage costs
    teacher = [json.loads(line) for line in (run_dir / "iter_0" / "teacher.jsonl").read_text().splitlines()]
    qa = next(r["value"] for r in rows if r["metric"] == "qa_examples" and r["iteration"] == 0)
    assert qa == len(load_items(name, data, "train", tmp_path / "x"))  # every train question
    if name in ("tabmwp", "m3cot"):  # the dataset's own solutions are the teacher
        assert teacher and all(t["steps"][0]["reward"] == 1.0 for t in teacher)
    else:
        assert teacher == []


def compose_prompts(name: str):
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "conf" / "prompts" / f"{name}.yaml")


def test_teacher_file_feeds_the_warmup_and_is_counted(chartqa_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from reflection.loop import selftrain

    teacher = tmp_path / "teacher.jsonl"
    rows = [{"image": "41699051005347.png", "question": "What is the peak value?", "rationale": "The top is 14.\nAnswer: 14"},
            {"image": "multi_col_1.png", "question": "What share is green?", "rationale": "Green is 57%.\nAnswer: 57%"},
            {"image": "no_such_chart.png", "question": "Anything?", "rationale": "No.\nAnswer: 1"}]
    teacher.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["env=chartqa", f"env.path={chartqa_dir}", *TINY_RUN,
                                                        "iterations=0", f"warmup.teacher_file={teacher}",
                                                        f"run_dir={tmp_path / 'run'}"])
    run_dir = selftrain(cfg)
    value = {r["metric"]: r["value"] for r in rows_of(run_dir) if r["iteration"] == 0 and r["split"] == "train"}
    assert (value["teacher_rows_matched"], value["teacher_rows_unmatched"]) == (2, 1)
    assert value["teacher_episodes"] == 2 and value["teacher_examples"] == 2
    outputs = [json.loads(line)["steps"][0]["output"] for line in (run_dir / "iter_0" / "teacher.jsonl").open()]
    assert sorted(outputs) == sorted(r["rationale"] for r in rows[:2])


def test_cli_on_a_benchmark_and_without_data(geoqa_dir, tmp_path):
    import subprocess
    import sys
    import time

    start = time.monotonic()
    missing = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "env=geoqa",
                              f"run_dir={tmp_path / 'none'}"], capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - start
    assert missing.returncode != 0
    for words in ("geoqa: no data: env.path is not set", "geoQA-data/", "train.jsonl", "MM-self-improve-qwen2vl",
                  "env.path=DIR"):
        assert words in missing.stderr
    assert not (tmp_path / "none" / "iter_0").exists()  # nothing was trained or evaluated
    assert seconds < 30  # typically ~6 s here; the bound is loose for a busy CI machine
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "env=geoqa",
                           f"env.path={geoqa_dir}", *TINY_RUN, f"run_dir={tmp_path / 'none'}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]  # the failed first try left nothing that blocks it
    assert any(r["metric"] == "test@1" and r["iteration"] == 1 for r in rows_of(tmp_path / "none"))
