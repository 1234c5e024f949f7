"""One writer per output folder: an advisory lock that names its holder, and the CPU count a run may use.

Two runs writing the same outputs at once would delete each other's temporary files or install each other's
results. A run that writes below a folder therefore holds an OS lock (``fcntl.flock``) on a small file in it for as
long as it writes: the kernel drops the lock when the process ends, however it ends, so a killed run never leaves a
stale lock behind, and the next run simply takes it. The file keeps the holder's pid, command and start time, which
the refused run prints. On systems without ``fcntl`` (Windows) runs are not locked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mseg_semantic.errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class BusyError(InputError):
    """Another live process holds the lock of the folder this run would write to."""


@contextmanager
def exclusive(lock_file: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the lock ``lock_file`` (created if needed; never deleted) while the block runs.

    Raises :class:`BusyError` naming the holder when another process holds it.
    """
    lock_file = Path(lock_file)
    if fcntl is None:
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(_busy_message(fd, lock_file.parent)) from None
        holder = {"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy_message(fd: int, folder: Path) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        who = f"another '{holder['command']}' (pid {holder['pid']}, started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another mseg run"
    return f"{who} is writing below {folder}; wait for it to finish (or stop it) and run this again"


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1
