"""Connections to the PostgreSQL ledger: connect (errors told without the password), bring
the schema up to date, and the writer task that runs a worker's requests in batches, one
transaction per batch, reconnecting when the server goes away."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import psycopg

from ..errors import JournalError
from ..ledger_url import LedgerUrl
from .schema import MIGRATE, MIGRATIONS, SCHEMA_VERSION, lock_key

__all__ = ["Connection", "Work", "Writer", "connect", "migrate", "translate"]

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
Work = Callable[[Connection], Awaitable[Any]]
_BATCH = 500  # requests in one transaction at the most
# The server aborted the transaction to break a deadlock, or for a serialisation failure:
# nothing of it happened, so it is run again.
_TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class _Request(NamedTuple):
    work: Work
    future: asyncio.Future[Any]
    solo: bool


CONNECT_TIMEOUT = 10  # seconds


def translate(url: LedgerUrl, err: BaseException, doing: str) -> JournalError:
    """A driver error as one line naming the ledger, its password masked."""
    text = " ".join(str(err).split()) or type(err).__name__
    return JournalError(f"{doing} the ledger {url.masked}: {url.scrub(text)}")


async def connect(url: LedgerUrl) -> Connection:
    """:raises JournalError: the server cannot be reached, or refused the login."""
    try:
        return await psycopg.AsyncConnection.connect(
            url.reveal(),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="asyncmailer",
        )
    except psycopg.Error as err:
        raise translate(url, err, "cannot connect to") from None


async def migrate(conn: Connection, url: LedgerUrl) -> None:
    """Create or update the schema (whoever comes first; the others wait on the lock).

    :raises JournalError: the database's schema is newer than this asyncmailer knows.
    """
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(MIGRATE))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS asyncmailer_schema (version INTEGER NOT NULL)"
            )
            row = await (await conn.execute("SELECT version FROM asyncmailer_schema")).fetchone()
            if row is None:
                await conn.execute("INSERT INTO asyncmailer_schema VALUES (0)")
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the ledger {url.masked} has schema version {version}; this asyncmailer "
                    f"knows up to {SCHEMA_VERSION}: run the newer asyncmailer that made it"
                )
            for step in MIGRATIONS[version:]:
                await conn.execute(step.encode())
            await conn.execute("UPDATE asyncmailer_schema SET version = %s", (SCHEMA_VERSION,))
    except psycopg.Error as err:
        raise translate(url, err, "cannot set up") from None


class Writer:
    """Owns one connection; runs queued requests in the order given, in batches, one
    transaction per batch. When the connection is lost, it reconnects (for up to `outage`
    seconds) and runs the same batch again; a batch the server aborted as a deadlock or a
    serialisation failure is run again too. So every request must be safe to repeat (the
    ledger's writes are fenced by their lease and state: a repeat changes nothing).

    A `solo` request runs in a transaction of its own: one that waits on what other workers
    hold too (the load's lock, the campaign's pace and quota rows). Kept out of batches,
    it never holds this worker's rows while it waits, so workers cannot deadlock."""

    def __init__(self, url: LedgerUrl, *, outage: float) -> None:
        self.url = url
        self.outage = outage
        self.loop = asyncio.get_running_loop()
        self._queue: collections.deque[_Request | None] = collections.deque()
        self._wake = asyncio.Event()
        self.conn: Connection | None = None
        self.reconnects = 0
        self.retries = 0  # batches run again after a deadlock or serialisation failure
        # The database stayed away for a whole `outage`: later batches try once, not again
        # for a whole outage each, until a connection is made.
        self.down = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Writer {self.url.masked} queued={len(self._queue)}>"

    async def start(self) -> None:
        self.conn = await connect(self.url)
        self._task = asyncio.create_task(self._run())

    def submit(self, work: Work, *, solo: bool = False) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue.append(_Request(work, future, solo))
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Run what is queued, then close the connection."""
        self._queue.append(None)
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.conn is not None:
            await self.conn.close()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            while not queue:
                self._wake.clear()
                await self._wake.wait()
            first = queue.popleft()
            if first is None:
                return
            batch = [first]
            while not first.solo and len(batch) < _BATCH and queue:
                item = queue[0]
                if item is None or item.solo:
                    break  # after this batch
                batch.append(item)
                queue.popleft()
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        deadline: float | None = None
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        while True:
            conn = self.conn
            assert conn is not None
            try:
                answers = []
                async with conn.transaction():
                    for request in batch:
                        try:
                            answers.append((request.future, await request.work(conn), None))
                        except psycopg.Error:
                            raise
                        except Exception as err:  # a refusal (fenced) or a bug: that one only
                            answers.append((request.future, None, err))
                break
            except _TRANSIENT:
                self.retries += 1
                continue
            except psycopg.Error as err:
                if not conn.broken and not conn.closed:
                    answers = [(request.future, None, err) for request in batch]
                    break
                if deadline is None:
                    deadline = self.loop.time() + (0.0 if self.down else self.outage)
                if not await self._reconnect(deadline):
                    self.down = True
                    answers = [(request.future, None, err) for request in batch]
                    break
        for future, value, error in answers:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
                future.exception()  # retrieved: a request nobody awaits must not warn
            else:
                future.set_result(value)

    async def _reconnect(self, deadline: float) -> bool:
        """A new connection, trying until `deadline`; False if none could be made."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        wait = 0.2
        while True:  # at least one try, even past the deadline
            try:
                self.conn = await connect(self.url)
            except JournalError:
                if self.loop.time() >= deadline:
                    return False
                await asyncio.sleep(min(wait, max(deadline - self.loop.time(), 0)))
                wait = min(wait * 2, 1.0)
                continue
            self.reconnects += 1
            self.down = False
            return True
