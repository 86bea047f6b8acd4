"""Recipient lists from a file (CSV or one address per line), streamed in flat memory.

The file is read by a worker thread in batches, so the event loop never blocks and memory does
not grow with the list. Before anything is sent, `scan()` checks the whole file is UTF-8 without
NUL bytes and counts its lines (for progress and ETA). Each row becomes a `Recipient` or a
`BadRow` naming file and line; `RecipientFile.batches()` gives them as `RowBatch` columns
instead, without an object per row (what the loader reads a long list with). Duplicates are
the journal's business: it keeps each address once, on disk.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import functools
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .addresses import Mailbox, Mailboxes, check_header_value, parse_mailbox, plain_address
from .display import shorten
from .errors import InputError

__all__ = ["BadRow", "Recipient", "RecipientFile", "RowBatch"]

_BATCH = 2000  # rows (not blank, not a comment) per read
_SCAN_CHUNK = 1 << 20
MAX_LINE = 64 * 1024  # characters in a line of a text list; a longer one is a bad row


@dataclass(frozen=True, slots=True)
class Recipient:
    """One list row: its address and every other column, kept for later merging."""

    mailbox: Mailbox
    line: int
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was not sent, and why."""

    path: Path
    line: int
    text: str
    reason: str

    def __post_init__(self) -> None:
        # A row of any length is one bad row: what is kept and shown of it is bounded.
        object.__setattr__(self, "text", shorten(self.text, 200))
        object.__setattr__(self, "reason", shorten(self.reason, 300))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(slots=True)
class RowBatch:
    """Rows read in one go, kept as columns: a long list is a million rows, and an object or
    two each is most of the cost of reading it. The good rows' mailboxes, their line numbers
    and (when asked for) their fields; each bad row with the count of good rows before it in
    the batch, which places it in the file's order."""

    mailboxes: Mailboxes = field(default_factory=Mailboxes)
    lines: list[int] = field(default_factory=list)
    fields: list[Mapping[str, str]] | None = None  # None: not kept (or a plain-text list)
    bad: list[tuple[int, BadRow]] = field(default_factory=list)

    def __len__(self) -> int:
        """Rows in all, good and bad."""
        return len(self.lines) + len(self.bad)

    def recipient(self, index: int) -> Recipient:
        """The good row `index` as a `Recipient`."""
        fields = self.fields[index] if self.fields is not None else {}
        return Recipient(self.mailboxes[index], self.lines[index], fields)

    def items(self) -> Iterator[Recipient | BadRow]:
        """Every row in the file's order."""
        good = 0
        for before, row in self.bad:
            for index in range(good, before):
                yield self.recipient(index)
            good = before
            yield row
        for index in range(good, len(self.lines)):
            yield self.recipient(index)


class _Reader:
    """The thread-side half: an open file and its CSV reader, read a batch at a time."""

    def __init__(self, path: Path, column: str, name_column: str) -> None:
        self.path = path
        self.handle: IO[str] = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
        self.is_csv = path.suffix.lower() == ".csv"
        self.rows: Iterator[list[str]] = csv.reader(self.handle) if self.is_csv else iter(())
        self.header: list[str] = []
        self.column = 0
        self.name = -1
        self.line = 0
        if self.is_csv:
            try:
                self._read_header(column, name_column)
            except BaseException:
                self.handle.close()
                raise

    def _read_header(self, column: str, name_column: str) -> None:
        header = next(self.rows, None)
        self.line = 1
        if header is None:
            raise InputError("the file is empty; a CSV list needs a header row", path=self.path)
        self.header = [h.strip() for h in header]
        lowered = [h.lower() for h in self.header]
        if column.lower() not in lowered:
            found = ", ".join(repr(h) for h in self.header) or "none"
            raise InputError(
                f"no {column!r} column in the header (columns: {found}); set recipients_column",
                path=self.path,
                line=1,
            )
        self.column = lowered.index(column.lower())
        self.name = lowered.index(name_column.lower()) if name_column.lower() in lowered else -1

    def batch(self, *, fields: bool = True) -> RowBatch:
        """The next `_BATCH` rows (fewer at the end of the file; none after it), with their
        fields if `fields`."""
        rows = RowBatch(fields=[] if fields and self.is_csv else None)
        if self.is_csv:
            self._csv_rows(rows)
        else:
            self._text_rows(rows)
        return rows

    def _lines(self, count: int) -> list[str]:
        """Up to `count` lines, each at most `MAX_LINE` characters: a longer one is read
        past and comes back as one over the limit (a bad row), whatever its length."""
        read = []
        for _ in range(count):
            line = self.handle.readline(MAX_LINE + 1)
            if not line:
                break
            if len(line) > MAX_LINE and not line.endswith("\n"):
                while (rest := self.handle.readline(1 << 20)) and not rest.endswith("\n"):
                    pass  # the rest of an overlong line: skipped, never held whole
            read.append(line)
        return read

    def _text_rows(self, rows: RowBatch) -> None:
        addrs, names, lines = rows.mailboxes.addrs, rows.mailboxes.names, rows.lines
        count = 0
        while count < _BATCH:
            read = self._lines(_BATCH - count)
            if not read:
                break
            for text in read:
                self.line += 1
                if len(text) > MAX_LINE:
                    count += 1
                    reason = f"the line is longer than {MAX_LINE:,} characters"
                    rows.bad.append((len(lines), BadRow(self.path, self.line, text, reason)))
                    continue
                text = text.strip()
                if not text or text[0] == "#":
                    continue
                count += 1
                addr = plain_address(text)  # most lines: a bare address, in one match
                if addr is not None:
                    addrs.append(addr)
                    names.append("")
                    lines.append(self.line)
                    continue
                try:
                    mailbox = parse_mailbox(text)
                except ValueError as err:
                    rows.bad.append((len(lines), BadRow(self.path, self.line, text, str(err))))
                    continue
                addrs.append(mailbox.addr)
                names.append(mailbox.name)
                lines.append(self.line)

    def _csv_rows(self, rows: RowBatch) -> None:
        count = 0
        while count < _BATCH:
            line = self.line + 1
            try:
                row = next(self.rows, None)
            except csv.Error as err:  # a field over the csv module's limit (128 KiB)
                self.line = getattr(self.rows, "line_num", line)
                count += 1
                rows.bad.append((len(rows.lines), BadRow(self.path, line, "", f"bad row: {err}")))
                continue
            if row is None:
                break
            self.line = getattr(self.rows, "line_num", self.line)
            if not "".join(row).strip():  # blank: no cell with anything but spaces
                continue
            count += 1
            problem = self._csv_row(rows, row, line)
            if problem is not None:
                rows.bad.append((len(rows.lines), problem))

    def _csv_row(self, rows: RowBatch, row: list[str], line: int) -> BadRow | None:
        """Add one non-blank row to `rows`, or say why it is bad."""
        if len(row) != len(self.header):
            return BadRow(
                self.path,
                line,
                ",".join(row),
                f"expected {len(self.header)} columns, found {len(row)}",
            )
        text = row[self.column].strip()
        name = row[self.name].strip() if self.name >= 0 else ""
        addr = plain_address(text)  # a bare address, in one match: it has no name of its own
        if addr is None:
            try:
                mailbox = parse_mailbox(text)
            except ValueError as err:
                return BadRow(self.path, line, text, f"{self.header[self.column]}: {err}")
            addr = mailbox.addr
            name = mailbox.name or name
            from_column = not mailbox.name
        else:
            from_column = True
        if name and from_column and (problem := check_header_value(name)):
            column = self.header[self.name]
            return BadRow(self.path, line, text, f"{column}: {name!r} {problem}")
        rows.mailboxes.addrs.append(addr)
        rows.mailboxes.names.append(name)
        rows.lines.append(line)
        if rows.fields is not None:
            rows.fields.append(dict(zip(self.header, row, strict=True)))
        return None

    def close(self) -> None:
        self.handle.close()


def _scan(path: Path) -> None:
    """Check the whole file is UTF-8 without NUL bytes (counting lines to name one)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_SCAN_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line = lines + chunk.count(b"\n", 0, max(err.start, 0)) + 1
                raise InputError(
                    "not valid UTF-8 text (save the list as UTF-8)", path=path, line=line
                ) from None
            if b"\x00" in chunk:
                line = lines + chunk.count(b"\n", 0, chunk.index(b"\x00")) + 1
                raise InputError("contains a NUL byte; is it a text file?", path=path, line=line)
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(
                "not valid UTF-8 text (the file ends inside a character)", path=path, line=lines + 1
            ) from None


class RecipientFile:
    """A recipient list file, read lazily; iterate it with ``async for``.

    Yields a `Recipient` or a `BadRow` for every row that is not blank (or a comment).
    """

    def __init__(
        self,
        path: Path,
        *,
        column: str = "email",
        name_column: str = "name",
    ) -> None:
        self.path = path
        self.column = column
        self.name_column = name_column
        self.bad_rows = 0
        self.columns: tuple[str, ...] = ()  # a CSV's header, once iteration has begun

    async def scan(self) -> None:
        """Read the whole file once in a thread.

        :raises InputError: missing file, not UTF-8, NUL byte (with the line).
        """
        try:
            await asyncio.to_thread(_scan, self.path)
        except OSError as err:
            raise InputError(
                f"cannot read the recipient list: {err.strerror}",
                path=self.path,
                field="recipients_file",
            ) from None

    async def __aiter__(self) -> AsyncGenerator[Recipient | BadRow, None]:
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for item in batch.items():
                    yield item

    async def batches(self, *, fields: bool = True) -> AsyncGenerator[RowBatch, None]:
        """The rows a batch at a time (`RowBatch`), each batch not empty; with each row's
        fields (a CSV's columns by name) only if `fields`."""
        try:
            reader = await asyncio.to_thread(_Reader, self.path, self.column, self.name_column)
        except OSError as err:
            raise InputError(
                f"cannot read the recipient list: {err.strerror}", path=self.path
            ) from None
        self.columns = tuple(reader.header) if reader.is_csv else ()
        try:
            while batch := await self._batch(reader, fields):
                self.bad_rows += len(batch.bad)
                yield batch
        finally:
            await asyncio.to_thread(reader.close)

    async def _batch(self, reader: _Reader, fields: bool) -> RowBatch:
        """The next rows. The file was checked by `scan()`; it can still fail, or be changed
        under us, while it is read (sending may have started by then).

        :raises InputError: naming the file and the first line of the batch.
        """
        first = reader.line + 1
        try:
            return await asyncio.to_thread(functools.partial(reader.batch, fields=fields))
        except OSError as err:
            problem = f"cannot read the recipient list from here on: {err.strerror or err}"
        except UnicodeDecodeError:  # text is decoded a block at a time: somewhere after here
            problem = (
                "not valid UTF-8 text from here on any more: was the list changed while it "
                "was read?"
            )
        raise InputError(problem, path=self.path, line=first)
