"""Write results: an incremental CSV or JSON-lines report file, and the table printed at the end."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from .errors import InputError
from .results import RecipientResult

__all__ = ["REPORT_FIELDS", "ReportWriter", "format_table"]

REPORT_FIELDS = ("recipient", "status", "code", "message")
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ReportWriter:
    """Append results to a report file as they arrive, flushing after each batch, so a run
    that stops half-way leaves every finished recipient in the file.

    The format follows the suffix: ``.csv`` (header ``recipient,status,code,message``), or
    ``.jsonl``/``.ndjson`` (one JSON object per line).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        kind = _FORMATS.get(self.path.suffix.lower())
        if kind is None:
            raise InputError("unknown report format; name the file .csv or .jsonl", path=self.path)
        self.kind = kind
        self._file: AsyncBufferedIOBase | None = None

    async def __aenter__(self) -> ReportWriter:
        try:
            self._file = await aiofiles.open(self.path, "wb")
        except OSError as err:
            raise InputError(f"cannot write the report: {err.strerror}", path=self.path) from None
        if self.kind == "csv":
            await self._write_rows([dict(zip(REPORT_FIELDS, REPORT_FIELDS, strict=True))])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def write(self, results: Sequence[RecipientResult]) -> None:
        await self._write_rows([r.as_row() for r in results])

    async def _write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self._file is not None, "use ReportWriter as an async context manager"
        if self.kind == "csv":
            buffer = io.StringIO()
            csv.DictWriter(buffer, REPORT_FIELDS, lineterminator="\n").writerows(rows)
            text = buffer.getvalue()
        else:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        await self._file.write(text.encode("utf-8"))
        await self._file.flush()


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
