"""A run folder's safety: one writer at a time, and writes that fail with a message, not a traceback.

:class:`RunLock` holds an exclusive ``flock`` on ``RUN/.lock`` (which records the holder's pid, host,
start time and command) for as long as the run lives, so a second run in the same folder is refused,
naming the holder. The kernel drops a ``flock`` when its process dies, even by ``kill -9``, so a lock
file whose lock is free was left by a process that died: the next run reports it as stale and takes
the folder over.

:func:`writing` turns an ``OSError`` of a write (read-only folder, full disk, a file where a folder must
be) into a :class:`vidcsl.errors.RunFolderError` naming the path and the cause.

    with RunLock(run_dir) as lock:
        if lock.stale:
            print(f"removed a stale lock: {describe_holder(lock.stale)}")
        with writing(run_dir / "config.yaml", "write the config"):
            ...
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vidcsl.errors import RunFolderError

LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"  # replacing(PATH) writes PATH.<random>.tmp, then renames it to PATH
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: new files get the permissions open() would give them


def describe_os_error(err: OSError) -> str:
    """``No space left on device (ENOSPC)``: the cause of an OSError in one phrase."""
    name = errno.errorcode.get(err.errno or 0)
    text = err.strerror or str(err)
    return f"{text} ({name})" if name else text


@contextmanager
def writing(path: str | os.PathLike, what: str = "write") -> Iterator[None]:
    """Run a write; an ``OSError`` becomes ``RunFolderError("cannot <what> '<path>': <cause>")``."""
    try:
        yield
    except OSError as err:
        raise RunFolderError(f"cannot {what} {str(path)!r}: {describe_os_error(err)}") from None


@contextmanager
def replacing(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write a file that replaces ``path`` whole or not at all: a temporary file beside it, synced to disk,
    renamed over ``path`` when the block ends; on any failure it is removed and ``path`` is as before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete what killed writes of ``path`` left behind (``PATH.*.tmp``); returns them.

    Call it only while holding the run folder's lock: a live writer's temporary file looks the same.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    leftovers = sorted(path.parent.glob(f"{path.name}.*{TEMP_SUFFIX}"))
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return leftovers


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"process {holder.get('pid')} on host {holder.get('host')!r} (since {since}: {holder.get('command')})"


class RunLock:
    """Exclusive use of a run folder by this process (see the module docstring).

    ``acquire`` creates the folder if needed; ``stale`` is the record a dead holder left, if any.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        with writing(self.run_dir, "create the run folder"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            with writing(self.path, "create the lock file"):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise RunFolderError(f"run folder {str(self.run_dir)!r} is in use by {describe_holder(holder)}; "
                                     f"wait for it to finish or stop it, or choose another run folder") from None
            except OSError as err:
                os.close(fd)
                raise RunFolderError(f"cannot lock the run folder {str(self.run_dir)!r} "
                                     f"({describe_os_error(err)})") from None
            if _is_file_at(fd, self.path):  # not a lock file its last holder removed as we opened it
                break
            os.close(fd)
        self._fd = fd
        previous = _read_record(fd)
        self.stale = previous if previous and previous.get("pid") != os.getpid() else None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        with writing(self.path, "write the lock file"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: nobody can lock a file still being removed
        except OSError:
            pass  # a read-only folder: the free flock already tells the next run that this one ended
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode()) if data else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
