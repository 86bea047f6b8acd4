"""Write results: an incremental CSV or JSON-lines report file, and the table printed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .display import printable, shorten
from .errors import InputError
from .results import RecipientResult, ResultPage

__all__ = ["REPORT_FIELDS", "ReportWriter", "format_table"]

REPORT_FIELDS = ("recipient", "status", "code", "message", "relay")
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ReportWriter:
    """Append results to a report file as they arrive, so a run that stops half-way leaves
    every finished recipient in the file.

    The format follows the suffix: ``.csv`` (header ``recipient,status,code,message,relay``), or
    ``.jsonl``/``.ndjson`` (one JSON object per line).

    `append()` never waits: results go on a queue, and a thread of the writer's own turns
    whatever has queued into one write and flush, at most every `linger` seconds (a group
    commit for the report: rows reach the file within about `linger` of coming, and neither
    sending nor the event loop waits for the disk). `write()` appends and waits until the
    rows are in the file; `keep_up()` appends and waits only for the rows before them, for a
    caller that can make rows faster than the file takes them.
    """

    def __init__(self, path: str | Path, *, linger: float = 0.02) -> None:
        self.path = Path(path)
        kind = _FORMATS.get(self.path.suffix.lower())
        if kind is None:
            raise InputError("unknown report format; name the file .csv or .jsonl", path=self.path)
        self.kind = kind
        self.linger = linger
        self._file: BinaryIO | None = None
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None  # InputError, or a bug in formatting a row
        self._written: asyncio.Future[None] | None = None  # the last keep_up()'s rows

    async def __aenter__(self) -> ReportWriter:
        try:
            self._file = await asyncio.to_thread(open, self.path, "wb")
        except OSError as err:
            raise self._failed(err) from None
        if self.kind == "csv":
            try:
                await asyncio.to_thread(self._store, [REPORT_FIELDS])
            except OSError as err:
                await self._close()
                raise self._failed(err) from None
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name=f"report {self.path.name}", daemon=True
        )
        self._thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is None:
            return
        try:
            await self.flush()
        finally:
            await self._close()

    async def _close(self) -> None:
        thread, self._thread = self._thread, None
        try:
            if thread is not None:
                self._queue.put(None)
                await asyncio.shield(asyncio.to_thread(thread.join))
        finally:
            file, self._file = self._file, None
            if file is not None:
                try:
                    await asyncio.shield(asyncio.to_thread(file.close))
                except OSError as err:
                    raise self._failed(err) from None

    def _failed(self, err: OSError) -> InputError:
        return InputError(f"cannot write the report: {err.strerror or err}", path=self.path)

    def append(self, results: Sequence[RecipientResult]) -> None:
        """Queue results for the file; they are written while the caller goes on.

        :raises InputError: an earlier write failed (e.g. the disk is full).
        """
        assert self._thread is not None, "use ReportWriter as an async context manager"
        if self._error is not None:
            raise self._error
        self._queue.put(results)

    async def write(self, results: Sequence[RecipientResult]) -> None:
        """Append results and wait until they are in the file."""
        self.append(results)
        await self.flush()

    async def keep_up(self, results: Sequence[RecipientResult]) -> None:
        """Append results, then wait until the previous call's are in the file: at most two
        calls' rows wait in memory (the end of a long list reads the journal back faster
        than the file is written), while these are written as the caller makes the next.

        :raises InputError: the report cannot be written.
        """
        self.append(results)
        previous, self._written = self._written, asyncio.get_running_loop().create_future()
        self._queue.put(self._written)
        if previous is not None:
            await asyncio.shield(previous)
        if self._error is not None:
            raise self._error

    async def flush(self) -> None:
        """Wait until everything appended so far is in the file.

        :raises InputError: the report cannot be written.
        """
        if self._thread is not None:
            done = asyncio.get_running_loop().create_future()
            self._queue.put(done)
            await asyncio.shield(done)
        if self._error is not None:
            raise self._error

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread: everything queued, one write at a time, in order."""
        while True:
            requests = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    requests.append(self._queue.get_nowait())
            rows: list[tuple[str, str, int | None, str, str]] = []
            waiting: list[asyncio.Future[None]] = []
            stop = False
            pages = []
            for request in requests:
                if request is None:
                    stop = True
                elif isinstance(request, asyncio.Future):
                    waiting.append(request)
                else:
                    pages.append(request)
            try:
                for page in pages:  # in the try: a bug here must not kill the thread silently
                    rows.extend(_columns(page))
                if rows and self._error is None:
                    self._store_rows(rows)
            except OSError as err:
                self._error = self._failed(err)
            except Exception as err:  # a bug: flush() raises it, nobody waits on a dead thread
                self._error = err
            finally:
                for future in waiting:
                    loop.call_soon_threadsafe(_done, future)
            if stop:
                return
            if not waiting:
                time.sleep(self.linger)  # let the next rows gather: fewer, larger writes

    def _store_rows(self, rows: list[tuple[str, str, int | None, str, str]]) -> None:
        if self.kind == "csv":  # tuples through the C writer: no dict per row
            self._store(rows)
        else:
            self._store([dict(zip(REPORT_FIELDS, row, strict=True)) for row in rows])

    def _store(self, rows: Sequence[Sequence[Any]] | Sequence[dict[str, Any]]) -> None:
        """In a thread: format the rows (tuples in REPORT_FIELDS order for CSV, where None is
        written empty; dicts for JSON lines), write them and flush."""
        assert self._file is not None
        if self.kind == "csv":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(rows)
            text = buffer.getvalue()
        else:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # surrogateescape: a path with bytes that are not UTF-8 (in a bad row's message) is
        # written back as those bytes instead of failing the report.
        self._file.write(text.encode("utf-8", "surrogateescape"))
        self._file.flush()


# What the writer thread takes: results to write, a future to answer once all before it is
# written, or None to stop.
_Request = Sequence[RecipientResult] | asyncio.Future[None] | None


def _columns(
    results: Sequence[RecipientResult],
) -> Iterable[tuple[str, str, int | None, str, str]]:
    """The results as the report's columns (`REPORT_FIELDS`): a page the journal read back
    goes as its rows are, without an object each."""
    if isinstance(results, ResultPage):
        return results.report_rows()
    # A Status is a str (StrEnum): written as its value, without the slow `.value`.
    return [(r.recipient, r.status, r.code, r.message, r.relay) for r in results]


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def format_table(results: Sequence[RecipientResult]) -> str:
    """A plain-text table of results, one recipient per line."""
    headers = ("RECIPIENT", "STATUS", "CODE", "MESSAGE")
    # What lists and servers wrote is shown escaped and shortened: a row cannot steer the
    # terminal, nor widen every line of the table by its length.
    rows = [
        (
            shorten(printable(r.recipient), 100),
            r.status.value,
            "" if r.code is None else str(r.code),
            shorten(printable(r.message), 300),
        )
        for r in results
    ]
    widths = [max([len(headers[i])] + [len(row[i]) for row in rows]) for i in range(3)]
    lines = []
    for row in [headers, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
    return "\n".join(lines)
