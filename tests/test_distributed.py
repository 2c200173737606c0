"""`accelerate launch` with two CPU processes (gloo): sharded rollouts gathered once, data-parallel training,
one writer; the same samples and metric keys as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["env=synth_table", "model=tiny", "iterations=1", "env.n_train=8", "env.n_test=5", "env.max_new_tokens=8",
         "eval.ns=[1,2]", "sample.n=3", "train.batch_size=2", "warmup.teacher_examples=4",
         "eval.select_max_new_tokens=4"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def ids(path: Path) -> list[str]:
    return [json.loads(line)["episode_id"] for line in path.read_text().splitlines()]


def test_two_processes_write_each_sample_once_and_the_same_metrics(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *SMALL, f"run_dir={one}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               str(ROOT / "experiments" / "run.py"), *SMALL, f"run_dir={two}"],
                              capture_output=True, text=True, timeout=900)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for f in ("iter_0/teacher.jsonl", "iter_0/samples.jsonl", "iter_1/eval/greedy.jsonl", "iter_1/eval/samples.jsonl"):
        assert ids(two / f) == ids(one / f)  # every episode once, in order: the shards were gathered
    keys = lambda r: sorted((x["iteration"], x["split"], x["metric"]) for x in r)  # noqa: E731
    assert keys(rows(two)) == keys(rows(one))
    train = {(r["iteration"], r["metric"]): r["value"] for r in rows(two) if r["split"] == "train"}
    single = {(r["iteration"], r["metric"]): r["value"] for r in rows(one) if r["split"] == "train"}
    for k in (0, 1):
        assert train[(k, "world_size")] == 2 and single[(k, "world_size")] == 1
        assert train[(k, "final_lr")] == 0.0  # the cosine schedule ran to its end on optimizer steps
        # each process trains on half the batches (the odd one repeated so both take the same steps)
        assert train[(k, "train_steps")] == -(-single[(k, "train_steps")] // 2)
        assert train[(k, "positives")] + train[(k, "negatives")] == single[(k, "positives")] + single[(k, "negatives")] \
            if (k, "positives") in train else True
    assert not list(two.glob("iter_*/adapter.tmp"))
