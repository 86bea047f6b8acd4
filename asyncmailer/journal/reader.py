"""Reading a journal back: every recipient's latest result, and the counts by state, for the
end of a run, `asyncmailer status` and reports."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from ..errors import JournalError
from ..ledger import JournalState
from ..results import ResultPage, Status

T = TypeVar("T")

__all__ = ["NOT_YET", "JournalReader", "counts", "page", "result_columns"]

NOT_YET = "run the campaign again to send it"  # the message beside "not attempted"
_NOT_RUN = f"('{JournalState.PENDING}', '{JournalState.INFLIGHT}')"  # the run never got to it
# Each row as the report shows it (a `ResultRow`), made in SQL: a long list's final read is a
# million rows. Past DATA without a reply is unknown; pending or in flight and never tried,
# not attempted; pending or in flight after a try (given back untried, as after a sender's
# refusal, or a 452 left over), deferred with what it was told; every other state is the status
# of the same name. Journals written before `not attempted` was a status read the same way.
_UNTRIED = f"state IN {_NOT_RUN} AND attempts = 0"


def result_columns(not_yet: str) -> str:
    """The SQL columns of a `ResultRow` but its relay, from a table of recipients (this
    journal's, and the PostgreSQL ledger's: one rule for both); `not_yet` is the placeholder
    of the message given to the not attempted (`NOT_YET`)."""
    return (
        "id, addr,"
        f" CASE WHEN state = '{JournalState.DATA}' THEN '{Status.UNKNOWN}'"
        f" WHEN {_UNTRIED} THEN '{Status.NOT_ATTEMPTED}'"
        f" WHEN state IN {_NOT_RUN} THEN '{Status.DEFERRED}' ELSE state END,"
        f" CASE WHEN state = '{JournalState.DATA}' OR {_UNTRIED} THEN NULL ELSE code END,"
        f" CASE WHEN {_UNTRIED} THEN {not_yet} ELSE message END,"
        " attempts"
    )


_QUERY = f"SELECT {result_columns('?')}, {{relay}} FROM recipients WHERE id > ? ORDER BY id LIMIT ?"
_PAGE = _QUERY.format(relay="relay")
_PAGE_V1 = _QUERY.format(relay="''")  # a journal of format 1, read as it is: no relay


def page(db: sqlite3.Connection, after: int, limit: int) -> ResultPage:
    """Up to `limit` recipients after row id `after`, in order."""
    try:
        return ResultPage(db.execute(_PAGE, (NOT_YET, after, limit)).fetchall())
    except sqlite3.OperationalError as err:
        if "relay" not in str(err):
            raise
        # Read-only (status, report) on a journal no run of this version has opened yet.
        return ResultPage(db.execute(_PAGE_V1, (NOT_YET, after, limit)).fetchall())


def counts(db: sqlite3.Connection) -> Counter[JournalState]:
    rows = db.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state")
    return Counter({JournalState(state): count for state, count in rows})


class JournalReader:
    """Read a journal while (or after) a run writes it: `asyncmailer status`, reports."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise JournalError("no journal: this campaign has not run yet", path=self.path)
        # Used from the default executor's threads, one call at a time.
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    async def counts(self) -> Counter[JournalState]:
        """:raises JournalError: there is no journal, or the file is not one."""

        def read() -> Counter[JournalState]:
            with contextlib.closing(self._connect()) as db:
                return counts(db)

        return await self._read(read)

    async def _read(self, read: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(read)
        except (sqlite3.Error, ValueError) as err:
            raise JournalError(
                f"cannot read the journal: {err} (is it one? a send with --new-run sets it aside)",
                path=self.path,
            ) from err

    async def sent_on(self, day: str) -> int:
        """How many recipients this journal's run tried on `day` (YYYY-MM-DD)."""
        return await self._meta(f"sent:{day}")

    async def bad_rows(self) -> int:
        """How many rows of the list were bad (no row here), as its last whole reading found
        (`Ledger.end_load`)."""
        return await self._meta("load:bad_rows")

    async def _meta(self, key: str) -> int:
        def read() -> int:
            with contextlib.closing(self._connect()) as db:
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,))
                found = row.fetchone()
                return int(found[0]) if found else 0

        return await self._read(read)

    async def pages(self, limit: int = 5000) -> AsyncIterator[ResultPage]:
        """Every recipient's latest result, in order, a page at a time."""
        db = await asyncio.to_thread(self._connect)
        try:
            after = 0
            while found := await asyncio.to_thread(page, db, after, limit):
                yield found
                after = found.last_id
        finally:
            await asyncio.to_thread(db.close)
