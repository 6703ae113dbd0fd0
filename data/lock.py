"""One process at a time in a folder: an advisory lock that dies with its holder.

``hold_folder_lock(folder)`` takes an exclusive ``fcntl.flock`` on ``folder/.lock`` for the life of a ``with``
block, or raises ``FolderLocked`` at once, naming the holder (pid, host, since when, command), which the holder
writes into the lock file. The kernel drops the lock when the holder's last descriptor of the file closes, and a
process's descriptors close when it dies, however (SIGKILL and the OOM killer included): a killed holder
never leaves the folder stuck, and no stale-lock clean-up or pid guessing is needed. The file itself stays behind
(removing it would let two processes lock two different files of one name); its text is only read while the lock is
held by someone, so an old holder's text never names a live one.
``raise_if_locked(folder)`` asks the same question and writes nothing: a refusal before slow checks.

Children: a process started by ``multiprocessing``'s spawn (the detector pool) or ``subprocess`` does not inherit
the descriptor and does not take the lock. A forked child would share the parent's lock and keep it after the parent
died, so the descriptor is closed in forked children (a data loader's workers); the parent's lock is not affected.

Shared filesystems: on Linux, ``flock`` on NFS is carried out as an NFS byte-range lock on the whole file (NLM for
NFSv3, the protocol itself for NFSv4), so it keeps runs on different machines apart, unless the share is mounted
with ``nolock`` or ``local_lock=flock``/``all`` (then it keeps apart only the runs of one machine). The server frees
the lock of a client that died when that client's lease runs out (NFSv4: about 90 s), not at once. A filesystem
that refuses locks outright (e.g. Lustre mounted without ``-o flock``) gets a warning and no lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("data.lock")
LOCK_NAME = ".lock"  # hidden: every reader of a folder skips dot-files

# Descriptors of the locks this process holds, closed in a forked child so that the child never keeps one alive.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)

# errno values of filesystems that do not lock at all (as opposed to a lock held by someone).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
# A probe (``raise_if_locked``) holds a shared lock for an instant; a run taking the lock waits that long, so that
# two runs starting together never see each other's probe as a holder. A real holder keeps it far longer.
_PROBE_GRACE_S = 0.5


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock.

    Args:
        folder: the folder asked for.
        holder: what the holder wrote into the lock file (pid, host, since, command), empty when unreadable.
    """

    def __init__(self, folder: Path, holder: dict[str, Any]):
        self.folder, self.holder = folder, holder
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}, "
               f"command: {holder.get('command')}" if holder else "holder unknown: it has not written its name yet")
        super().__init__(f"{folder} is in use by another run ({who}); one run per folder at a time: wait for it to "
                         "finish or choose another folder (the lock goes when that process ends, even if killed)")


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}) + "\n"


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record; a holder that has just locked may not have written it yet, so wait for it a little."""
    for _ in range(10):
        try:
            holder = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict):
            return holder
        time.sleep(0.05)
    return {}


def _write_holder(fd: int) -> None:
    # Written in place, never by rename: the lock belongs to this very file, a replaced file would be unlocked.
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode("utf-8"), 0)


def _lock(fd: int, folder: Path, mode: int) -> bool:
    """Take the ``mode`` lock on ``fd`` (waiting out at most a probe's instant, no holder): True when taken, False
    when the filesystem does not lock at all."""
    deadline = time.monotonic() + _PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise FolderLocked(folder, _read_holder(fd)) from None
            time.sleep(0.05)
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
            return False


def raise_if_locked(folder: str | Path) -> None:
    """Raise ``FolderLocked`` when another process holds ``folder``'s lock; writes nothing (no folder or no lock
    file: free). Called before slow checks so that a second run is refused at once rather than after them; the run
    still takes the lock itself (``hold_folder_lock``) at its first write, which alone keeps runs apart."""
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)  # never O_CREAT: a probe creates nothing
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        _lock(fd, folder, fcntl.LOCK_SH)  # shared: probes never refuse each other
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s lock (``folder/.lock``) for the block; ``folder`` is created when missing. Yields the lock
    file's path.

    Raises:
        FolderLocked: another process holds it (raised at once: no waiting for the holder to finish).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's text may still be read
    owner = os.getpid()
    try:
        if _lock(fd, folder, fcntl.LOCK_EX):
            _HELD.add(fd)
            _write_holder(fd)
        else:
            LOGGER.warning("%s: this filesystem does not lock files; runs in this folder are not kept apart", folder)
        yield path
    finally:
        if os.getpid() == owner:  # a forked child leaving the block has no descriptor to close (see above)
            _HELD.discard(fd)
            os.close(fd)  # releases the lock
