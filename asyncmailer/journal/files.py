"""The journal's files: where a campaign's journal lives, its lock, and setting it aside."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from ..errors import JournalError

__all__ = ["archive", "journal_path", "lock", "probe_lock"]


def journal_path(state_dir: Path, campaign_id: str) -> Path:
    """The journal of a campaign's current run: ``<state_dir>/<campaign id>.journal.sqlite``
    (the id is the `campaign` key, else the campaign file's name)."""
    return state_dir / f"{campaign_id}.journal.sqlite"


def archive(path: Path) -> Path | None:
    """Set a campaign's journal aside (renamed with the time), so the next run starts afresh.
    Returns the new name, or None when there was no journal.

    :raises JournalError: another run holds it.
    """
    held = lock(path)
    try:
        if not path.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.{stamp}")
        number = 1
        while target.exists():  # two restarts in one second keep both
            number += 1
            target = path.with_name(f"{path.name}.{stamp}-{number}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                source.rename(f"{target}{suffix}")
        return target
    finally:
        os.close(held)


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
