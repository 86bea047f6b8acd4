"""Write results: an incremental CSV or JSON-lines report file, and the table printed at the end."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError
from .results import RecipientResult

__all__ = ["REPORT_FIELDS", "ReportWriter", "format_table"]

REPORT_FIELDS = ("recipient", "status", "code", "message")
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ReportWriter:
    """Append results to a report file as they arrive, so a run that stops half-way leaves
    every finished recipient in the file.

    The format follows the suffix: ``.csv`` (header ``recipient,status,code,message``), or
    ``.jsonl``/``.ndjson`` (one JSON object per line).

    `append()` never waits: results queue up and one writer turns whatever has queued into a
    single write and flush, in a thread, while the run goes on (a group commit for the
    report: rows reach the file one write after they come, and sending never waits for the
    disk). `write()` appends and waits until the rows are in the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        kind = _FORMATS.get(self.path.suffix.lower())
        if kind is None:
            raise InputError("unknown report format; name the file .csv or .jsonl", path=self.path)
        self.kind = kind
        self._file: BinaryIO | None = None
        self._queued: list[RecipientResult] = []
        self._flusher: asyncio.Future[None] | None = None
        self._error: InputError | None = None

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
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is None:
            return
        try:
            await self.flush()
        finally:
            await self._close()

    async def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                await asyncio.to_thread(file.close)
            except OSError as err:
                raise self._failed(err) from None

    def _failed(self, err: OSError) -> InputError:
        return InputError(f"cannot write the report: {err.strerror or err}", path=self.path)

    def append(self, results: Sequence[RecipientResult]) -> None:
        """Queue results for the file; they are written while the caller goes on.

        :raises InputError: an earlier write failed (e.g. the disk is full).
        """
        assert self._file is not None, "use ReportWriter as an async context manager"
        if self._error is not None:
            raise self._error
        self._queued.extend(results)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._drain())

    async def write(self, results: Sequence[RecipientResult]) -> None:
        """Append results and wait until they are in the file."""
        self.append(results)
        await self.flush()

    async def flush(self) -> None:
        """Wait until everything appended so far is in the file.

        :raises InputError: the report cannot be written.
        """
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._error is not None:
            raise self._error

    async def _drain(self) -> None:
        while self._queued and self._error is None:
            results, self._queued = self._queued, []
            try:
                await asyncio.to_thread(self._store_results, results)
            except OSError as err:
                self._error = self._failed(err)

    def _store_results(self, results: Sequence[RecipientResult]) -> None:
        if self.kind == "csv":  # tuples through the C writer: no dict per row
            self._store([(r.recipient, r.status.value, r.code, r.message) for r in results])
        else:
            self._store([r.as_row() for r in results])

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
        self._file.write(text.encode("utf-8"))
        self._file.flush()


def format_table(results: Sequence[RecipientResult]) -> str:
    """A plain-text table of results, one recipient per line."""
    headers = ("RECIPIENT", "STATUS", "CODE", "MESSAGE")
    rows = [
        (r.recipient, r.status.value, "" if r.code is None else str(r.code), r.message)
        for r in results
    ]
    widths = [max([len(headers[i])] + [len(row[i]) for row in rows]) for i in range(3)]
    lines = []
    for row in [headers, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
    return "\n".join(lines)
