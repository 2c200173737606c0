"""experiments/summarize.py: seeds are averaged, other config differences are kept apart."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from summarize import load, summarize  # noqa: E402


def fake_run(root: Path, name: str, seed: int, lr: float, values: list[float]) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.yaml").write_text(f"seed: {seed}\nrun_dir: {d}\ntrain:\n  lr: {lr}\n  log: {d}/x\n"
                                   "env:\n  name: synth_clevr\nmodel:\n  name: tiny\nmethod:\n  name: r3v\n")
    rows = [dict(iteration=k, split="test", metric="test@1", value=v, env="synth_clevr", model="tiny",
                 method="r3v", seed=seed) for k, v in enumerate(values)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_seeds_are_averaged_and_other_differences_get_a_variant(tmp_path):
    runs = [fake_run(tmp_path, "a", 0, 0.1, [0.2, 0.4]), fake_run(tmp_path, "b", 1, 0.1, [0.3, 0.6]),
            fake_run(tmp_path, "c", 0, 0.5, [0.1, 0.1])]
    text = summarize(load(runs))
    lines = [line for line in text.splitlines() if line.startswith("| synth_clevr")]
    assert len(lines) == 2
    assert "train.lr=0.1 | all | 2 | 0.250 ± 0.050 | 0.500 ± 0.100 |" in text
    assert "train.lr=0.5 | all | 1 | 0.100 | 0.100 |" in text
