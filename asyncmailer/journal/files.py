"""The journal's files: where a campaign's journal lives, and its lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import JournalError

__all__ = ["journal_path", "lock", "probe_lock"]


def journal_path(state_dir: Path, campaign_id: str) -> Path:
    """The journal of a campaign's current run: ``<state_dir>/<campaign id>.journal.sqlite``
    (the id is the `campaign` key, else the campaign file's name)."""
    return state_dir / f"{campaign_id}.journal.sqlite"


def probe_lock(path: Path) -> None:
    """Fail now if another run holds the campaign's journal.

    :raises JournalError: it is locked, or its folder cannot be created.
    """
    os.close(lock(path))


def lock(path: Path, *, create: bool = False) -> int:
    """Take the journal's lock (a file beside it), creating its folder; `create` also makes
    the journal file itself, readable by its owner only. Returns the lock's descriptor.

    :raises JournalError: another run holds it, or it cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise JournalError(
            f"cannot create the journal: {err.strerror} (set state_dir to a writable folder)",
            path=path,
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise JournalError(
            "another run of this campaign is in progress (its journal is locked); "
            "wait for it, or stop it first",
            path=path,
        ) from None
    if create:
        try:
            # The journal holds every address: readable by its owner only (sqlite gives its
            # -wal and -shm files the same mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            for suffix in ("", "-wal", "-shm"):  # journals made before this were 644
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{path}{suffix}", 0o600)
        except OSError as err:
            os.close(fd)
            raise JournalError(f"cannot create the journal: {err.strerror}", path=path) from None
    return fd
