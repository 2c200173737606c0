"""What each stage of a run costs: seconds, peak memory of this process, of its child processes (the
browsers) and, on a GPU, of CUDA. The loop writes these figures as `stage_*` rows with a `stage` key."""

from __future__ import annotations

import resource
import sys
import threading
import time
from typing import Iterable

import psutil
import torch


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: the kernel's high-water mark (VmHWM), which `Meter`
    resets at each stage; where there is no procfs, getrusage's peak since the process started (KiB on
    Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def pss_mb(procs: Iterable[psutil.Process | int]) -> float:
    """Proportional set size of these processes together, in MiB: shared pages counted once over the processes
    that share them (RSS would count Chromium's shared libraries once per process). A process that has ended
    counts 0; where there is no PSS, its RSS is counted."""
    total = 0.0
    for proc in procs:
        try:
            proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
            try:
                total += proc.memory_full_info().pss / 2**20
            except (AttributeError, psutil.AccessDenied):  # no PSS on this platform
                total += _rss_mb(proc)
        except psutil.Error:  # it ended between the listing and the read
            pass
    return total


class Meter:
    """Seconds and peak memory of the stage in progress: `enter(stage)` starts measuring it, `figures()` reads
    what it has cost so far.

    - Peak RSS of this process: the kernel's high-water mark (VmHWM), reset at each stage by writing 5 to
      /proc/self/clear_refs, so a stage's peak is its own and not an earlier stage's. Where that file cannot be
      written the peak is the process's peak so far (`peak_resets` says which).
    - Peak memory of the child processes together (browsers live outside this process): their PSS (shared
      pages counted once over the processes that share them; RSS would count Chromium's shared libraries once
      per process), sampled every `interval` seconds by a daemon thread.
    - On a GPU, torch's max allocated memory, reset at each stage.
    """

    def __init__(self, interval: float = 2.0):
        self.stage: str | None = None
        self.start = time.perf_counter()
        self.interval = interval
        self.proc = psutil.Process()
        self.peak_resets = self._reset_peak()
        self._children_peak = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def enter(self, stage: str) -> None:
        """Start measuring `stage`, unless it is the stage already being measured."""
        if stage == self.stage:
            return
        self.stage, self.start = stage, time.perf_counter()
        self.peak_resets = self._reset_peak()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with self._lock:
            self._children_peak = self._children_pss()
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="meter", daemon=True)
            self._thread.start()

    def figures(self) -> dict[str, float]:
        """What the current stage has cost: seconds since `enter` and its peak memory, in MiB."""
        with self._lock:
            self._children_peak = max(self._children_peak, self._children_pss())
            children = self._children_peak
        out = {"stage_seconds": time.perf_counter() - self.start, "stage_peak_rss_mb": peak_rss_mb(),
               "stage_peak_children_pss_mb": children}
        if torch.cuda.is_available():
            out["stage_cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:  # 5: reset the peak RSS to the current RSS
                f.write("5")
            return True
        except OSError:
            return False

    def _children_pss(self) -> float:
        return pss_mb(self.proc.children(recursive=True))

    def _sample(self) -> None:
        while True:
            time.sleep(self.interval)
            rss = self._children_pss()
            with self._lock:
                self._children_peak = max(self._children_peak, rss)
