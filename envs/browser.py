"""Headless Chromium for MiniWoB++: finding the binaries, the flags this machine needs, process lifetime.

miniwob starts Chrome itself and passes it only `headless`, `disable-gpu` and `no-sandbox`, with no hook for
more. We give it a tiny wrapper script as `MINIWOB_CHROME_BINARY` that execs the real Chromium with our flags:
unlike overriding `SeleniumInstance.create_driver`, this needs no monkey-patching of miniwob (whose env class
builds the instance internally) and keeps working across miniwob versions. The environment variables are set
only while a browser starts (`BrowserProcesses.launching`), so the user's own settings are never rewritten.

Lifetime: every process of one browser carries a unique environment marker inherited from the launch
(chromedriver -> chromium -> zygotes/renderers), so `kill()` finds them all by pid even after a crash has
orphaned them; the chromedriver pid and its descendants seen at start are tracked as well. Each browser also
gets its own TMPDIR (profile, sockets), removed with it. `kill()` runs on close, on error and on restart, and a
`weakref.finalize` of the owner (also run at interpreter exit) is the safety net.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from envs.files import atomic_write, cache_dir

# Without the networking/component/sync flags Chromium keeps opening connections that are refused here; without
# --disable-dev-shm-usage it can run out of the small /dev/shm of containers. 600x830 fits the flight tasks and
# is harmless for the others (screenshots are cropped to the task area).
CHROME_FLAGS = (
    "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=600,830",
)
MARKER = "R3V_BROWSER_ID"  # environment variable that tags every process of one browser
TMP_PREFIX = "r3v-chromium-"  # a browser's TMPDIR: TMP_PREFIX + owner pid + "-" + random
_ids = itertools.count()
_launch_lock = threading.Lock()  # launching sets process-wide environment variables: one browser at a time


def chrome_paths() -> tuple[str, str]:
    """(chromium, chromedriver): $MINIWOB_CHROME_BINARY / $MINIWOB_CHROMEDRIVER, else the Debian paths or PATH."""
    def find(var: str, names: tuple[str, ...]) -> str | None:
        if os.environ.get(var):
            return os.environ[var] if os.access(os.environ[var], os.X_OK) else None
        for name in names:
            path = f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else shutil.which(name)
            if path:
                return path
        return None

    chrome = find("MINIWOB_CHROME_BINARY", ("chromium", "chromium-browser", "google-chrome"))
    driver = find("MINIWOB_CHROMEDRIVER", ("chromedriver",))
    if not chrome or not driver:
        raise FileNotFoundError(
            f"MiniWoB++ needs Chromium and a matching chromedriver (found chromium={chrome}, chromedriver={driver}). "
            "Install both in one command: `apt-get install -y chromium chromium-driver`, or point "
            "MINIWOB_CHROME_BINARY and MINIWOB_CHROMEDRIVER at them.")
    return chrome, driver


def chrome_wrapper(chrome: str) -> str:
    """An executable that runs `chrome` with CHROME_FLAGS, written once into the cache (named by its content).

    The browsers of one run start in parallel threads, and runs may start together on a fresh machine: every
    writer goes through a uniquely named temporary file and one rename, and a file already there is kept."""
    script = f'#!/bin/sh\nexec "{chrome}" {" ".join(CHROME_FLAGS)} "$@"\n'
    path = cache_dir() / f"chromium-{hashlib.sha1(script.encode()).hexdigest()[:12]}.sh"
    if not (os.access(path, os.X_OK) and path.read_text() == script):
        atomic_write(path, script, mode=0o777)
    return str(path)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _owner_gone(tag: str) -> bool:
    """Whether `tag` ("<owner pid>-...": a browser id or temp dir name of ours) names a process that is gone."""
    owner = tag.split("-")[0]
    return owner.isdigit() and not psutil.pid_exists(int(owner))


def reap_orphans() -> int:
    """Kill browsers left by a run that died without cleaning up (e.g. SIGKILL): processes carrying our marker
    whose owning Python process is gone; remove their temp dirs. Returns how many processes were killed."""
    marked = [p for p in psutil.process_iter(["environ"]) if _owner_gone((p.info["environ"] or {}).get(MARKER) or "")]
    # Chromium's zygotes and their renderers and utility processes start with a cleared environment: found as
    # children of the marked ones. Left alone they die slowly, writing into the profile we are removing.
    orphans = list({p.pid: p for p in marked + [c for p in marked for c in _children(p)]}.values())
    for p in orphans:
        try:
            p.kill()
        except psutil.Error:
            pass
    _wait(orphans, timeout=10.0)
    for tmp in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):  # their TMPDIRs: named after the owner pid
        if _owner_gone(tmp.name[len(TMP_PREFIX):]):
            _remove_dir(tmp)
    return len(orphans)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def _remove_dir(path: str | Path, timeout: float = 5.0) -> None:
    """Remove `path`, again while it reappears: a Chromium helper started after the processes were listed (so
    nothing waited for it) can still write into its profile after the first removal."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


_reaped = False


class BrowserProcesses:
    """The processes of one browser (chromedriver and everything it started), ended together by pid."""

    def __init__(self) -> None:
        self.id = f"{os.getpid()}-{next(_ids)}"
        self.root: psutil.Process | None = None  # chromedriver
        self.procs: dict[int, psutil.Process] = {}  # psutil.Process remembers its start time: safe on pid reuse
        self.tmp: str | None = None  # TMPDIR of the browser: its profile and sockets, which a kill leaves behind

    @contextmanager
    def launching(self) -> Iterator[None]:
        """Environment for miniwob to start this browser: our binaries and flags, offline, tagged with our id."""
        global _reaped
        chrome, driver = chrome_paths()
        if not _reaped:  # once per process, before our first browser
            _reaped = True
            reap_orphans()
        self.tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
        env = {"MINIWOB_CHROME_BINARY": chrome_wrapper(chrome), "MINIWOB_CHROMEDRIVER": driver,
               "SE_OFFLINE": "true",  # selenium-manager must never run: there is no internet
               "TMPDIR": self.tmp, MARKER: self.id}
        with _launch_lock:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                yield
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def track(self, root_pid: int | None = None) -> None:
        """Remember chromedriver (`root_pid`) and its live descendants (again after navigations: new renderers)."""
        try:
            if root_pid is not None:
                self.root = psutil.Process(root_pid)
        except psutil.Error:
            return  # exited meanwhile: kill() still finds the rest by marker
        if self.root is not None and _alive(self.root):
            self.procs.update((p.pid, p) for p in [self.root, *_children(self.root)])

    def _marked(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["environ"])
                if (p.info["environ"] or {}).get(MARKER) == self.id and p.pid != os.getpid()]

    def pids(self) -> set[int]:
        """Pids of this browser's processes that are still alive (zombies count as gone)."""
        return {p.pid for p in [*self.procs.values(), *self._marked()] if _alive(p)}

    def kill(self, timeout: float = 3.0) -> None:
        """End every process of this browser: SIGTERM, then SIGKILL after `timeout` s; reap; remove its temp dirs."""
        self.track()
        procs = [p for p in {**self.procs, **{p.pid: p for p in self._marked()}}.values() if _alive(p) or _ours(p)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in procs:
                try:
                    p.send_signal(sig)
                    p.send_signal(signal.SIGCONT)  # a stopped (hung) process acts on SIGTERM only once resumed
                except psutil.Error:
                    pass
            procs = _wait(procs, timeout)
            if not procs:
                break
        if self.tmp:
            _remove_dir(self.tmp)
        self.procs.clear()
        self.root = None


def _ours(p: psutil.Process) -> bool:
    try:
        return p.ppid() == os.getpid()
    except psutil.Error:
        return False


def _gone(p: psutil.Process) -> bool:
    """Whether `p` has exited (a zombie has); reaps it when it is our child, so no zombie of ours stays behind."""
    if _ours(p):  # chromedriver
        try:
            p.wait(0)
        except psutil.TimeoutExpired:
            return False
        except psutil.Error:
            pass
        return True
    return not _alive(p)


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for `procs` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in procs if not _gone(p)]
        if not procs or time.monotonic() > deadline:
            return procs
        time.sleep(0.02)


def guard(owner: object, procs: BrowserProcesses) -> weakref.finalize:
    """Kill `procs` when `owner` is garbage-collected or the interpreter exits, whichever comes first."""
    return weakref.finalize(owner, procs.kill)
