"""`experiments/chaos.py --quick`: a model=tiny run under 3 SIGKILLs at random moments, a MiniWoB run under one,
and 2 browser faults; nothing lost, duplicated or leaked (about a minute and a half on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_chaos_quick_loses_nothing(tmp_path):
    out = tmp_path / "chaos"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "chaos.py"), "--quick", "--out", str(out),
                           "--seed", "1"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = json.loads((out / "chaos.json").read_text())
    qa, web, browser = summary["qa"], summary["web"], summary["browser"]
    assert qa["kills"] == 3 and qa["resumes"] == 3
    assert qa["samples"] > 0 and qa["samples_lost"] == qa["samples_duplicated"] == 0
    assert qa["records_lost"] == qa["records_duplicated"] == qa["records_extra"] == 0
    assert qa["metric_rows"] > 0 and qa["metric_rows_missing"] == qa["metric_rows_extra"] == 0
    assert qa["rows_per_stage_equal"] and qa["temp_files_left"] == 0
    assert web["kills"] == 1 and web["samples_lost"] == web["samples_duplicated"] == web["metric_rows_missing"] == 0
    assert web["leaked_browser_processes"] == 0
    assert browser["browser_faults"] == 2 and browser["restarts"] >= 2 and browser["failed_episodes"] == 2
    assert browser["leaked_browser_processes"] == 0
    assert "samples lost: 0 of" in proc.stdout and "leaked browser processes: 0" in proc.stdout
