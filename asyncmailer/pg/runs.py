"""The runs of a campaign in the shared ledger: which run a worker joins (the latest when
unfinished, a new one when asked or when there is none), and each run's end, recorded in
the database. Identity is the campaign's id and a fingerprint of its content, never a file
path: every host finds the same run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..errors import JournalError
from ..journal.reader import NOT_YET
from ..journal.runs import RunRecord
from ..ledger_url import LedgerUrl
from ..results import ResultPage
from ..run_choice import LEFT, RunRequest
from .database import Connection, connect, migrate, translate
from .ledger import OUTAGE, RESULTS
from .schema import RUNS, lock_key

__all__ = ["PgRuns"]

JOURNAL = "postgresql"  # a RunRecord's `journal` in the shared ledger
_COLUMNS = "serial, id, started, ended, fingerprint, counts, scheduled, covers"


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PgRuns:
    """The runs of campaign `campaign` in the ledger at `url`: `begin()`, `end()`, `serial()`.
    Use as an async context (it holds one connection; the schema is made or updated on
    entry)."""

    def __init__(self, url: LedgerUrl, campaign: str) -> None:
        self.url = url
        self.campaign = campaign
        self._conn: Connection | None = None
        self._serials: dict[str, int] = {}
        self._in_transaction = False  # a lost connection cannot be taken up mid-transaction
        self.changed: list[str] = []  # what changed since the latest run, as `begin()` saw
        self.began = False  # `begin()` began a new run (else it joined the latest)

    def __repr__(self) -> str:
        return f"<PgRuns {self.campaign} at {self.url.masked}>"

    async def __aenter__(self) -> PgRuns:
        self._conn = await connect(self.url)
        try:
            await migrate(self._conn, self.url)
        except BaseException:
            await self._conn.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    def serial(self, record: RunRecord) -> int:
        """The database's key of a run `begin()` or `runs()` gave."""
        return self._serials[record.id]

    async def _query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement; a connection lost since the last (the server restarted while
        the run went on) is made again, for up to `OUTAGE` seconds."""
        assert self._conn is not None
        deadline = time.monotonic() + OUTAGE
        while True:
            try:
                cursor = await self._conn.execute(sql, params)
                return await cursor.fetchall() if cursor.description else []
            except psycopg.Error as err:
                lost = self._conn.broken or self._conn.closed
                if not lost or self._in_transaction or time.monotonic() > deadline:
                    raise translate(self.url, err, "cannot use") from None
            await asyncio.sleep(0.5)
            with contextlib.suppress(JournalError):
                self._conn = await connect(self.url)

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        serial, run_id, started, ended, fingerprint, counts, scheduled, covers = row
        self._serials[run_id] = int(serial)
        return RunRecord(
            id=run_id,
            started=_stamp(started) or "",
            journal=JOURNAL,
            fingerprint=dict(fingerprint),
            scheduled=_stamp(scheduled),
            ended=_stamp(ended),
            counts=dict(counts) if counts is not None else None,
            covers=list(covers),
        )

    async def runs(self) -> list[RunRecord]:
        """Every run of the campaign, oldest first."""
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM asyncmailer_runs WHERE campaign = %s ORDER BY serial",
            (self.campaign,),
        )
        return [self._record(row) for row in rows]

    async def begin(self, request: RunRequest) -> RunRecord:
        """The run this worker goes to, as `request` chooses from the campaign's runs, made
        once whoever comes first: the campaign's runs are locked meanwhile, so of several
        workers or schedulers starting together one begins a run and the others join it.

        :raises NothingToSendError: the latest run finished and no new one was asked for.
        :raises InputError: the latest run is unfinished and the campaign changed since
            (unless `request.keep_changes`).
        """
        assert self._conn is not None
        try:
            async with self._conn.transaction():
                self._in_transaction = True
                await self._conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", lock_key(RUNS, self.campaign)
                )
                return await self._begin(request)
        except psycopg.Error as err:
            raise translate(self.url, err, "cannot use") from None
        finally:
            self._in_transaction = False

    async def _begin(self, request: RunRequest) -> RunRecord:
        choice = request.choose(await self.runs(), journal=JOURNAL)
        self.changed, self.began = choice.changed, choice.new
        record = choice.record
        if choice.new:
            rows = await self._query(
                f"INSERT INTO asyncmailer_runs (campaign, id, fingerprint, scheduled)"
                f" VALUES (%s, %s, %s, %s) RETURNING {_COLUMNS}",
                (self.campaign, record.id, json.dumps(record.fingerprint), record.scheduled),
            )
            return self._record(rows[0])
        serial = self.serial(record)
        rows = await self._query(
            "UPDATE asyncmailer_runs SET ended = NULL, counts = NULL, fingerprint = %s,"
            f" covers = %s WHERE serial = %s RETURNING {_COLUMNS}",
            (json.dumps(record.fingerprint), json.dumps(record.covers), serial),
        )
        if choice.reload_list:  # read the list again
            await self._query(
                "DELETE FROM asyncmailer_meta WHERE run = %s AND key = 'load:done'", (serial,)
            )
        return self._record(rows[0])

    async def sent_today(self, day: str) -> int:
        """Nothing to add: the ledger's daily counts are the campaign's, across its runs."""
        return 0

    async def counts(self, record: RunRecord) -> dict[str, int]:
        rows = await self._query(
            "SELECT state, count(*) FROM asyncmailer_recipients WHERE run = %s GROUP BY state",
            (self.serial(record),),
        )
        return {str(state): int(count) for state, count in sorted(rows)}

    async def bad_rows(self, record: RunRecord) -> int:
        """How many rows of the run's list were bad (`run.loader`: no row of their own)."""
        rows = await self._query(
            "SELECT value FROM asyncmailer_meta WHERE run = %s AND key = 'load:bad_rows'",
            (self.serial(record),),
        )
        return int(rows[0][0]) if rows else 0

    async def live_workers(self, record: RunRecord) -> int:
        """Workers holding a live lease on the run now."""
        rows = await self._query(
            "SELECT count(*) FROM asyncmailer_leases WHERE run = %s AND expires > now()",
            (self.serial(record),),
        )
        return int(rows[0][0])

    async def pages(self, record: RunRecord, limit: int = 5000) -> AsyncIterator[ResultPage]:
        """Every recipient's latest result in the run, in order, a page at a time."""
        after = 0
        while True:
            rows = await self._query(
                RESULTS,
                {"run": self.serial(record), "after": after, "limit": limit, "not_yet": NOT_YET},
            )
            if not rows:
                return
            page = ResultPage(rows)
            yield page
            after = page.last_id

    async def end(self, record: RunRecord, *, stopped: bool) -> RunRecord:
        """Record the run's counts; finished when nobody is left to send (by any worker)
        and this worker was not stopped early."""
        counts = await self.counts(record)
        left = sum(counts.get(str(state), 0) for state in LEFT)
        rows = await self._query(
            "UPDATE asyncmailer_runs SET counts = %s,"
            " ended = CASE WHEN %s THEN NULL WHEN %s THEN ended ELSE COALESCE(ended, now()) END"
            f" WHERE serial = %s RETURNING {_COLUMNS}",
            (json.dumps(counts), bool(left), stopped, self.serial(record)),
        )
        if not rows:
            raise JournalError(f"run {record.id} is not in the ledger {self.url.masked}")
        return self._record(rows[0])
