"""The R3V loop with a policy that is right some of the time, so the pool -> objectives path really runs.

The tiny random model never answers right, so tests/test_loop.py never sees a positive sample. Here
`Run.policy` is replaced by a scripted policy that answers each question from its gold answer on a fixed
pattern of samples and wrongly on the others (training still runs on the real tiny model). Then the samples
hold positives and negatives, iteration 1 trains on sft, refine and select examples, and those are exactly
what reflection/examples.py builds from iter_0/samples.jsonl.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir

import reflection.loop
from agent.prompts import Prompts
from envs.qa import read_items
from reflection.examples import pool_examples
from reflection.loop import selftrain
from reflection.pool import load_pool

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 8, 4
OVERRIDES = ["env=synth_table", "model=tiny", f"env.n_train={N_TRAIN}", f"env.n_test={N_TEST}", "iterations=1",
             "sample.n=3", "eval.ns=[1,2]", "warmup.teacher_examples=3", "train.batch_size=4",
             "env.max_new_tokens=12", "eval.select_max_new_tokens=6", "method.select_sizes=[2,3]",
             "method.select_per_episode=2"]
# Train question i's 3 samples, right (True) or wrong, by i % 4:
PATTERNS = [
    (True, True, True),  # all right: sft only
    (False, False, False),  # all wrong: nothing to learn
    (True, True, False),  # 2 right + 1 wrong: sft, refine, select (2 pos + 1 neg)
    (False, True, False),  # 1 right + 2 wrong (the last unparsable): sft, refine, select (1 pos + 2 neg)
]


def config(run_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"run_dir={run_dir}", *OVERRIDES])


def prompt_text(messages) -> str:
    return messages[-1]["content"][-1]["text"]


def right_text(item, j: int) -> str:
    return f"Sample {j}: I read the table for {item.id}.\nAnswer: {item.answer}"


def wrong_text(item, j: int, unparsable: bool = False) -> str:
    if unparsable:
        return f"Sample {j}: I lost track of {item.id}."  # no answer line
    wrong = ("A" if item.answer != "A" else "B") if item.answer_type == "choice" else f"{float(item.answer) + 7:.2f}"
    return f"Sample {j}: I misread the table for {item.id}.\nAnswer: {wrong}"


class GoldPolicy:
    """The Policy interface, answering each question from its item (found by its image file):
    - training samples: right or wrong by PATTERNS;
    - test, greedy: right for even-numbered test items; test samples: sample j right when i + j is even;
    - self-select prompts: the gold final line."""

    def __init__(self, data_dir: Path):
        self.items = {}
        for split in ("train", "test"):
            for i, item in enumerate(read_items(data_dir / f"{split}.jsonl")):
                self.items[Path(item.image).name] = (split, i, item)
        self.count: dict[tuple[str, str], int] = defaultdict(int)
        self.descs: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts, n=1, greedy=False, max_new_tokens=None, desc="generate", progress=True):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        self.descs.append(desc)
        out = []
        for messages, count in zip(prompts, counts):
            image = Path(messages[0]["content"][0]["path"]).name
            split, i, item = self.items[image]
            texts = []
            for _ in range(count):
                j = self.count[(desc, image)]
                self.count[(desc, image)] += 1
                if "Which prediction is correct?" in prompt_text(messages):
                    texts.append(f"Answer: {item.answer}")
                    continue
                assert "First generate a step-by-step solution" in prompt_text(messages), desc
                if split == "train":
                    ok = PATTERNS[i % 4][j]
                else:
                    ok = i % 2 == 0 if greedy else (i + j) % 2 == 0
                unparsable = split == "train" and i % 4 == 3 and j == 2
                texts.append(right_text(item, j) if ok else wrong_text(item, j, unparsable))
            out.append(texts)
        return out


def metrics(run_dir: Path) -> dict[tuple[int, str, str], float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["iteration"], r["split"], r["metric"]): r["value"] for r in rows if "domain" not in r}


def test_pool_to_objectives_runs_end_to_end(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = config(run_dir)
    policies: list[GoldPolicy] = []

    def scripted(self, model, processor):
        policies.append(GoldPolicy(Path(self.cfg.env.data_dir)))
        return policies[-1]

    trained: dict[str, list] = {}
    real_train = reflection.loop.train

    def train(model, processor, examples, *args, **kwargs):
        trained[kwargs["desc"]] = list(examples)
        return real_train(model, processor, examples, *args, **kwargs)

    monkeypatch.setattr(reflection.loop.Run, "policy", scripted)
    monkeypatch.setattr(reflection.loop, "train", train)
    selftrain(cfg)

    assert len(policies) == 2  # iteration 0 (eval + samples), iteration 1 (eval)
    assert sorted(trained) == ["train iter 0", "train iter 1"]
    value = metrics(run_dir)
    n_test = len(read_items(Path(cfg.env.data_dir) / "test.jsonl"))
    evens = len(range(0, n_test, 2)) / n_test

    # the samples hold positives and negatives, as the patterns say: per 4 questions 3 + 0 + 2 + 1 right of 12
    pos = sum(sum(PATTERNS[i % 4]) for i in range(N_TRAIN))
    assert (pos, N_TRAIN * 3 - pos) == (12, 12)
    assert value[(0, "train", "positives")] == pos and value[(0, "train", "negatives")] == N_TRAIN * 3 - pos
    assert value[(0, "train", "sample_accuracy")] == 0.5
    # the test metrics are the scripted policy's: greedy right on even items; samples right when i + j is even
    assert value[(0, "test", "test@1")] == value[(1, "test", "test@1")] == evens
    assert value[(1, "test", "maj@1")] == value[(1, "test", "select@1")] == value[(1, "test", "pass@1")] == evens
    assert value[(1, "test", "maj@2")] == evens  # one right, one wrong: the tie goes to sample 0
    assert value[(1, "test", "pass@2")] == 1.0 and value[(1, "test", "select@2")] == 1.0  # select says gold

    # iteration 1 trained on the objectives built from iter_0's samples: exactly those pool_examples builds
    prompts = Prompts(**cfg.prompts)
    pool = load_pool(run_dir, 0)
    assert len(pool) == N_TRAIN * 3
    built = pool_examples(pool, prompts, random.Random(cfg.seed + 1), cfg.method.refine, cfg.method.select,
                          tuple(cfg.method.select_sizes), cfg.method.select_per_episode)
    # by hand: sft for questions with a right sample (i % 4 in 0, 2, 3); refine for those with both a right and
    # a wrong one (i % 4 in 2, 3), and 2 select examples each: 1 pos + 1 neg, and the one 3-candidate mix their
    # samples allow (2 pos + 1 neg for i % 4 == 2, 1 pos + 2 neg for i % 4 == 3)
    expected = {"sft": 6, "refine": 4, "select": 8}
    assert {kind: len(built[kind]) for kind in expected} == expected
    for kind, n in expected.items():
        assert value[(1, "train", f"{kind}_examples")] == n > 0
    used = defaultdict(list)
    for sample in trained["train iter 1"]:
        used[sample.kind].append(sample)
    for kind in expected:
        assert [(s.messages, s.target, s.task_id) for s in used[kind]] == [
            (s.messages, s.target, s.task_id) for s in built[kind]], kind
    assert value[(1, "train", "qa_examples")] == len(used["qa"]) == N_TRAIN
    assert "sft" not in {s.kind for s in trained["train iter 0"]}

    # what the examples hold: a refine example's target is the most recent right sample, and its prompt holds
    # the most recent wrong one; sft targets are right samples; select targets are the gold answer line
    items = {item.id: item for item in read_items(Path(cfg.env.data_dir) / "train.jsonl")}
    by_task = defaultdict(list)
    for t in pool:
        by_task[t.task_id].append(t)
    for ex in used["refine"]:
        group = by_task[ex.task_id]
        good = max((t for t in group if t.reward > 0), key=lambda t: t.sample)
        bad = max((t for t in group if t.reward == 0), key=lambda t: t.sample)
        assert ex.target == good.steps[0].output == right_text(items[ex.task_id], good.sample)
        assert bad.steps[0].output in prompt_text(ex.messages)
        assert ex.messages == prompts.refine_prompt(good.steps[0].observation, bad.steps[0].output)
        i = int(ex.task_id.rsplit("-", 1)[1])
        assert bad.steps[0].output == wrong_text(items[ex.task_id], bad.sample, unparsable=i % 4 == 3)
        assert bad.steps[0].parsed is None if i % 4 == 3 else bad.steps[0].parsed is not None
    assert sorted(ex.task_id for ex in used["refine"]) == [f"train-{i:05d}" for i in range(N_TRAIN) if i % 4 in (2, 3)]
    for ex in used["sft"]:
        good = max((t for t in by_task[ex.task_id] if t.reward > 0), key=lambda t: t.sample)
        assert ex.target == good.steps[0].output and ex.messages == prompts.cot_prompt(good.steps[0].observation)
    assert sorted(ex.task_id for ex in used["sft"]) == [f"train-{i:05d}" for i in range(N_TRAIN) if i % 4 != 1]
    for ex in used["select"]:
        item = items[ex.task_id]
        assert ex.target == f"Answer: {item.answer}"
        listed = [t for t in by_task[ex.task_id] if t.steps[0].output in prompt_text(ex.messages)]
        assert len(listed) == prompt_text(ex.messages).count("Model's prediction ") in (2, 3)
        assert {t.reward > 0 for t in listed} == {True, False}  # right and wrong candidates
    sizes = sorted(prompt_text(ex.messages).count("Model's prediction ") for ex in used["select"])
    assert sizes == [2, 2, 2, 2, 3, 3, 3, 3]
