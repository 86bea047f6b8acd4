"""The suppression store shared by the campaigns of a state folder (``suppressions.sqlite``):
entries added, removed and listed (`SuppressionStore`), and what a campaign honours
(`campaign_suppression`: its file, and the store unless ``shared_suppression: false``).

Every writer goes through `SuppressionStore.add`: `asyncmailer suppress`, the end of a run
(its permanent address failures, `Reason.BOUNCE`), and later a bounce reader. Each call opens
the file, does its work in one transaction in a worker thread, and closes it: runs of several
campaigns and the command line share it, SQLite's locks (WAL, a busy timeout) keep them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ..config import Campaign
from ..errors import JournalError
from ..suppression import Entry, Reason, Suppression, SuppressionStorage, read_suppression_file

__all__ = [
    "STORE_NAME",
    "Entry",
    "SuppressionStore",
    "campaign_store",
    "campaign_suppression",
    "store_path",
]

T = TypeVar("T")
STORE_NAME = "suppressions.sqlite"
_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS suppressions (
    key TEXT PRIMARY KEY,       -- user@example.org (as Mailbox.key) or @example.org
    reason TEXT NOT NULL,       -- a suppression.Reason
    code TEXT,                  -- a bounce's reply and enhanced code: 550 5.1.1
    note TEXT NOT NULL DEFAULT '',
    campaign TEXT,              -- the campaign that added it, if one did
    added REAL NOT NULL         -- when (seconds since the epoch)
) WITHOUT ROWID;
-- Entries removed by hand, and when: a run's bounces older than that are not added back.
CREATE TABLE IF NOT EXISTS removed (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
"""
_OURS = {"meta", "suppressions", "removed"}
_BUSY_TIMEOUT = 30.0  # seconds to wait for another writer (a run adding its bounces)


def store_path(state_dir: Path) -> Path:
    """The store of a state folder: ``<state_dir>/suppressions.sqlite``."""
    return state_dir / STORE_NAME


class SuppressionStore:
    """The shared store in one file. Every method runs in a worker thread.

    :raises JournalError: (from every method) the file cannot be created, read or written,
        or is a database of something else.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<SuppressionStore {self.path}>"

    @property
    def where(self) -> str:
        return str(self.path)

    @classmethod
    def of(cls, state_dir: Path) -> SuppressionStore:
        return cls(store_path(state_dir))

    async def add(self, entries: Iterable[Entry], *, unless_removed_after: float = 0.0) -> int:
        """Add entries not there yet (one already there keeps its first reason). With
        `unless_removed_after` (a time), an entry removed by hand since then is not added
        back (a run's bounces, read from its journal again at each end). Returns how many
        were added."""
        now = time.time()
        rows = [
            (e.key, e.reason.value, e.code, e.note, e.campaign, e.added or now) for e in entries
        ]
        if not rows:
            return 0

        def add(db: sqlite3.Connection) -> int:
            before = db.total_changes
            if unless_removed_after:
                db.executemany(
                    "INSERT INTO suppressions SELECT ?1, ?2, ?3, ?4, ?5, ?6"
                    " WHERE NOT EXISTS (SELECT 1 FROM removed WHERE key = ?1 AND at >= ?7)"
                    " ON CONFLICT (key) DO NOTHING",
                    [(*row, unless_removed_after) for row in rows],
                )
            else:
                db.executemany(
                    "INSERT INTO suppressions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    rows,
                )
            return db.total_changes - before

        return await self._run(add, create=True)

    async def remove(self, keys: Sequence[str]) -> list[str]:
        """Remove entries by key; returns the keys that were there."""

        def remove(db: sqlite3.Connection) -> list[str]:
            found = []
            now = time.time()
            for key in keys:
                if db.execute("DELETE FROM suppressions WHERE key = ?", (key,)).rowcount:
                    found.append(key)
                    db.execute("INSERT OR REPLACE INTO removed VALUES (?, ?)", (key, now))
            return found

        return await self._run(remove, create=False, default=[])

    async def entries(self) -> list[Entry]:
        """Every entry, by key (none when the store does not exist yet)."""

        def read(db: sqlite3.Connection) -> list[Entry]:
            rows = db.execute(
                "SELECT key, reason, code, note, campaign, added FROM suppressions ORDER BY key"
            )
            return [Entry(k, Reason(r), c, n, p, a) for k, r, c, n, p, a in rows]

        return await self._run(read, create=False, default=[])

    async def suppression(self) -> Suppression:
        """The store as a `Suppression` (empty when it does not exist yet)."""

        def read(db: sqlite3.Connection) -> Suppression:
            rows = db.execute("SELECT key, reason, code, campaign FROM suppressions")
            return Suppression(
                {key: Entry(key, Reason(r), c, campaign=p).why for key, r, c, p in rows}
            )

        return await self._run(read, create=False, default=Suppression())

    async def _run(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        create: bool,
        default: T | None = None,
    ) -> T:
        """`work` in one transaction on a connection of its own, in a thread. Without
        `create`, a store that does not exist is not made: `default` is returned."""

        def run() -> T:
            if not create and not self.path.exists():
                assert default is not None
                return default
            # One transaction (committed, or rolled back on an error), then closed.
            with contextlib.closing(self._connect(create)) as db, db:
                return work(db)

        try:
            return await asyncio.to_thread(run)
        except JournalError:
            raise
        except (sqlite3.Error, ValueError) as err:
            raise JournalError(f"cannot use the suppression store: {err}", path=self.path) from err

    def _connect(self, create: bool) -> sqlite3.Connection:
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Addresses: readable by their owner only (sqlite gives -wal and -shm the same).
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as err:
                raise JournalError(
                    f"cannot create the suppression store: {err.strerror} (set state_dir to a "
                    "writable folder)",
                    path=self.path,
                ) from None
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        try:
            tables = {
                name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if tables and not tables <= _OURS:
                raise JournalError(
                    "this file is a database of something else, not a suppression store",
                    path=self.path,
                )
            if not tables >= _OURS:
                _wal(db)
                # The tables and their version in one transaction: another process opening
                # the new store at the same moment sees both or neither.
                db.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA}"
                    f" INSERT OR IGNORE INTO meta VALUES ('schema', '{_VERSION}'); COMMIT;"
                )
            (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if int(version) != _VERSION:
                raise JournalError(
                    f"the suppression store is of format {version}; this asyncmailer reads "
                    f"format {_VERSION}",
                    path=self.path,
                )
            db.isolation_level = "IMMEDIATE"  # a writer takes its lock at the start
        except BaseException:
            db.close()
            raise
        return db


def campaign_store(campaign: Campaign) -> SuppressionStorage:
    """The shared store `campaign` honours and adds its bounces to: its shared ledger's when
    it has one (every host's workers see the same), else its state folder's."""
    if campaign.ledger is not None:
        from ..pg.suppressions import PgSuppressionStore

        return PgSuppressionStore(campaign.ledger)
    return SuppressionStore.of(campaign.state_dir)


def _wal(db: sqlite3.Connection) -> None:
    """Switch a new store to WAL. SQLite does not wait on its busy timeout for this switch
    when another connection is making the same new file (two runs ending at once): it says
    "locked" at once, so the switch is tried again until the timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


async def campaign_suppression(campaign: Campaign) -> Suppression:
    """What `campaign` never sends to: its `suppression_file`, and its shared store
    (`campaign_store`) unless it says ``shared_suppression: false`` (a file entry's note
    wins).

    :raises InputError: the file cannot be read or has a bad line (file and line named).
    :raises JournalError: the store cannot be read.
    """
    found = Suppression()
    if campaign.suppression_file is not None:
        found = await read_suppression_file(campaign.suppression_file)
    if campaign.shared_suppression:
        found = found | await campaign_store(campaign).suppression()
    return found
