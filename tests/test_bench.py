"""experiments/bench.py --quick end to end: real Chromium, the tiny model, TRL's SFTTrainer when installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| engine_vs_hf |" in done.stdout  # the table is printed
    return json.loads(out.read_text())


def check_spread(figure: dict, repeats: int) -> None:
    assert len(figure["values"]) == repeats
    assert figure["min"] <= figure["median"] <= figure["max"] and figure["min"] > 0


def test_quick_suite_writes_every_ratio_beside_its_raw_figures(report):
    ratios, repeats = report["ratios"], report["repeats"]
    for name in ("engine_vs_hf", "batched_vs_single", "browsers_16_vs_1", "train_peak_fraction"):
        assert ratios[name] > 0, name
    # each ratio is the quotient of the raw figures it comes from
    fp32 = report["engine"]["fp32"]
    assert ratios["engine_vs_hf"] == pytest.approx(fp32["fast"]["tokens_per_s"]["median"]
                                                   / fp32["hf"]["tokens_per_s"]["median"])
    browsers = report["browsers"]
    assert ratios["browsers_ratio_k"] == 2  # --quick measures K = 1, 2
    assert ratios["browsers_16_vs_1"] == pytest.approx(browsers["2"]["episodes_per_min"]["median"]
                                                       / browsers["1"]["episodes_per_min"]["median"])
    for k in ("1", "2"):
        check_spread(browsers[k]["episodes_per_min"], repeats)
        assert browsers[k]["teacher_success"] == 1.0  # the scripted teacher solves every episode
    for dtype in ("fp32", "bf16"):
        check_spread(report["peak"][dtype]["flops"], repeats)
    for engine in ("fast", "hf"):
        check_spread(fp32[engine]["tokens_per_s"], repeats)
        assert 0 < fp32[engine]["peak_fraction"] < 1
    batched = report["batched"]
    assert batched["batched"]["new_tokens"] == batched["single"]["new_tokens"]  # the same work, eos ignored
    assert ratios["batched_vs_single"] == pytest.approx(batched["batched"]["tokens_per_s"]["median"]
                                                        / batched["single"]["tokens_per_s"]["median"])
    assert 0 < ratios["train_peak_fraction"] < 1


def test_fp32_greedy_outputs_of_both_engines_are_identical(report):
    assert report["engine"]["fp32"]["identical_outputs"] is True
    assert report["ratios"]["engine_vs_hf_identical_outputs"] is True
    assert report["engine"]["fp32"]["fast"]["new_tokens"] == report["engine"]["fp32"]["hf"]["new_tokens"] > 0


def test_iteration_stages_have_their_seconds_and_peak_memory(report):
    stages = report["iteration"]["stages"]
    assert {"iter_0/data", "iter_0/train", "iter_0/eval", "iter_0/sample", "iter_1/train", "iter_1/eval"} <= set(stages)
    for name, figures in stages.items():
        assert figures["stage_seconds"] >= 0 and figures["stage_peak_rss_mb"] > 100, name
    assert stages["iter_0/train"]["stage_peak_children_pss_mb"] == 0  # no browser is alive while it trains
    assert report["iteration"]["seconds_total"] == pytest.approx(sum(f["stage_seconds"] for f in stages.values()))


def test_our_trainer_and_trl_train_the_same_batches(report):
    trainer = report["trainer"]
    if importlib.util.find_spec("trl") is None:
        assert "skipped" in trainer["trl"]
        pytest.skip("trl is not installed (pip install -e '.[bench]'): the TRL comparison is skipped")
    ours, trl = trainer["ours"], trainer["trl"]
    assert trainer["steps"] == 3 and len(ours["loss_curve"]) == len(trl["loss_curve"]) == trainer["steps"]
    assert ours["tokens"] == trl["tokens"]  # the same batches
    # same weights and batch: the first step's loss agrees (the tiny model's per-token losses are all ~ln(vocab),
    # so the per-example mean and the token mean coincide)
    assert ours["loss_curve"][0] == pytest.approx(trl["loss_curve"][0], abs=0.02)
    assert report["ratios"]["trainer_vs_trl"] == pytest.approx(ours["tokens_per_s"] / trl["tokens_per_s"])
