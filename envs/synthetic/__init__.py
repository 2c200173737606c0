"""Offline synthetic stand-ins for the visual-QA benchmarks, generated deterministically from a seed.

`build_dataset` writes a dataset folder in the QA format of `envs/qa.py` (`train.jsonl`, `test.jsonl`,
`images/`): the same format the loaders of the real benchmarks produce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from envs.files import atomic_write, file_lock
from envs.qa import QAItem, write_items
from envs.synthetic import chart, clevr, table

GENERATORS = {"synth_clevr": clevr.generate, "synth_table": table.generate, "synth_chart": chart.generate}


def build_dataset(name: str, out_dir: str | Path, n_train: int, n_test: int, seed: int) -> Path:
    """Generate (or reuse, when the settings match) a train/test dataset folder for a synthetic env.

    Test items whose content also occurs in train are dropped, so the test split measures generalisation.
    """
    out_dir = Path(out_dir)
    spec = {"name": name, "n_train": n_train, "n_test": n_test, "seed": seed, "version": 1}

    def done() -> bool:
        return (out_dir / "spec.json").exists() and json.loads((out_dir / "spec.json").read_text()) == spec

    if done():
        return out_dir
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):  # runs sharing a data_dir build it once
        if not done():
            _generate(name, out_dir, n_train, n_test, seed)
            atomic_write(out_dir / "spec.json", json.dumps(spec))  # last: marks the folder complete
    return out_dir


def _generate(name: str, out_dir: Path, n_train: int, n_test: int, seed: int) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    generate = GENERATORS[name]
    train = generate(n_train, 2 * seed, out_dir / "images", "train-")
    seen = {item.meta["key"] for item in train}
    test: list[QAItem] = []
    batch = 0
    while len(test) < n_test:  # draw until enough test items are new
        fresh = generate(n_test, 2 * seed + 1 + 1000 * batch, out_dir / "images", f"test{batch}-")
        for item in fresh:
            if len(test) < n_test and item.meta["key"] not in seen:
                seen.add(item.meta["key"])
                test.append(item)
            else:
                (out_dir / "images" / item.image).unlink()
        batch += 1
    for item in train + test:  # generators name images relative to their image folder
        item.image = f"images/{item.image}"
    write_items(train, out_dir / "train.jsonl")
    write_items(test, out_dir / "test.jsonl")
