"""Files that other threads, other processes or a crash may see half-done: atomic writes and locks.

Every write into a shared place (the cache, a run directory, a screenshots folder) goes through
`atomic_writer`: the data goes to a temporary file with a unique name in the target's folder, then replaces the
target in one rename. Readers see the old file or the new one, never a part of either, and two writers of the
same path never take each other's temporary file. Work that must happen once per path (converting a model)
runs under `file_lock`; a run directory is owned by one live process at a time (`RunLock`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def cache_dir() -> Path:
    """The project's cache: `$R3V_CACHE`, else `$XDG_CACHE_HOME/r3v`, else `~/.cache/r3v`. It holds only
    what can be made again (the converted default model, the Chromium wrapper): deleting it is safe."""
    if os.environ.get("R3V_CACHE"):
        return Path(os.environ["R3V_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "r3v"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFull(OSError):
    """A write failed for lack of space (ENOSPC, EDQUOT); the message names the file, which was left unchanged."""


@contextmanager
def atomic_writer(path: str | Path, mode: int = 0o666, binary: bool = False) -> Iterator[IO]:
    """A file object whose contents replace `path` in one step when the block ends without an exception
    (and are discarded otherwise). `mode` is filtered by the umask, as `open()` would do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # say which file, and that the run can go on later
            raise DiskFull(e.errno, f"{os.strerror(e.errno)} while writing {path} (it is unchanged): free some "
                                    "space, then run the same command again to resume") from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes, mode: int = 0o666) -> None:
    """Replace `path` with `data` in one step (see `atomic_writer`)."""
    with atomic_writer(path, mode, binary=isinstance(data, bytes)) as f:
        f.write(data)


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; waits while another holder has it.
    The kernel drops the lock when its process dies, so a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_temp_files(root: str | Path) -> int:
    """Delete the temporary files that `atomic_writer` left under `root` when its process was killed mid-write
    (`.NAME.XXXX.tmp`: never read, only in the way). Call it only while owning `root`. Returns how many."""
    removed = 0
    for tmp in Path(root).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class RunDirInUse(RuntimeError):
    """Another live process owns the run directory."""


class RunLock:
    """Ownership of a run directory by this process: an exclusive lock on `run_dir/.lock`, which names the
    owner's pid. A second process asking for it is refused at once (`RunDirInUse`); a dead owner's lock is
    gone with it, so a killed run can be resumed straight away."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunDirInUse(f"{self.path.parent} is in use by another run (pid {owner}). Wait for it to end, "
                              "or pick another run_dir=...") from None
        self._file.truncate(0)
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        self.removed_temp_files = remove_temp_files(self.path.parent)


    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
