"""The journal's writer: one thread owns the SQLite connection and runs queued requests in
batches, one transaction and one commit per batch (group commit), then answers each request
on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .schema import SCHEMA, SYNC_MODES

__all__ = ["Request", "Writer", "fail", "succeed"]

T = TypeVar("T")
Request = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
_BATCH = 500  # requests in one transaction at the most


class Writer(threading.Thread):
    """Owns the SQLite connection; runs queued requests in batches, one commit per batch.
    `setup` runs once, after the schema, before any request."""

    def __init__(
        self,
        path: Path,
        sync: str,
        setup: Callable[[sqlite3.Connection], None] | None = None,
        check: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        super().__init__(name=f"journal {path.name}", daemon=True)
        self.path = path
        self.sync = sync
        self.setup = setup
        self.check = check  # runs before the schema: may refuse a file that is not ours
        self.requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.db: sqlite3.Connection | None = None

    def submit(self, function: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a request; requests run in the order submitted."""
        future: asyncio.Future[T] = self.loop.create_future()
        self.requests.put((function, future))
        return future

    def stop(self) -> None:
        """Run what is queued, then end the thread."""
        self.requests.put(None)

    def run(self) -> None:
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.check is not None:
                self.check(self.db)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={SYNC_MODES[self.sync]}")
            self.db.executescript(SCHEMA)
            if self.setup is not None:
                self.setup(self.db)
        except Exception as err:  # sqlite3.Error, or the setup refusing the file
            self.loop.call_soon_threadsafe(fail, self.ready, err)
            if self.db is not None:
                self.db.close()
            return
        self.loop.call_soon_threadsafe(succeed, self.ready, None)
        while True:
            first = self.requests.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = self.requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.requests.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._run_batch(batch)
        self.db.close()

    def _run_batch(self, batch: list[Request]) -> None:
        assert self.db is not None
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for function, future in batch:
                try:
                    answers.append((future, function(self.db), None))
                except sqlite3.Error:
                    raise
                except Exception as err:  # a bug in one request fails that request only
                    answers.append((future, None, err))
            self.db.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            answers = [(future, None, err) for _, future in batch]
        # One wake-up of the event loop per batch, not one per request.
        self.loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in answers:
        if error is not None:
            fail(future, error)
        else:
            succeed(future, value)


def succeed(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a request nobody awaits must not warn at exit
