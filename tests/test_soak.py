"""experiments/soak.py in real Chromium, short: it samples a live browser's memory and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_measures_the_browser_and_leaves_nothing(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "experiments/soak.py", "--episodes", "10", "--every", "5", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads(out.read_text())
    assert len(settings) == 2
    for s in settings:
        assert s["episodes"] == 10 and len(s["samples"]) == 2
        assert s["solved"] >= 9  # the scripted teacher
        assert all(x["browser_pss_mib"] > 50 and x["browser_processes"] >= 2 for x in s["samples"])  # a live browser
        assert s["processes_after_close"] == 0 and s["temp_dirs_after_close"] == 0
        assert s["log_bytes_per_episode"] == 0
