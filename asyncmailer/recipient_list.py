"""Recipient lists from a file (CSV or one address per line), streamed in flat memory.

The file is read by a worker thread in batches, so the event loop never blocks and memory does
not grow with the list. Before anything is sent, `scan()` checks the whole file decodes in its
encoding (UTF-8 by default, a BOM allowed; `recipients_encoding`) without NUL characters. A
CSV's delimiter is the one given (`recipients_delimiter`) or the one its header line uses most
(`sniff_delimiter`); a row shorter than the header has empty fields for the cells it lacks.
Each row becomes a `Recipient` or a `BadRow` naming file and line; `RecipientFile.batches()`
gives them as `RowBatch` columns instead, without an object per row (what the loader reads a
long list with). Duplicates are the journal's business: it keeps each address once, on disk.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import functools
import itertools
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .addresses import Mailbox, Mailboxes, check_header_value, parse_mailbox, plain_address
from .display import shorten
from .errors import InputError

__all__ = [
    "DEFAULT_ENCODING",
    "DELIMITERS",
    "BadRow",
    "Recipient",
    "RecipientFile",
    "RowBatch",
    "sniff_delimiter",
]

DEFAULT_ENCODING = "utf-8"
# What spreadsheets write, by locale: "," (English), ";" (where "," is the decimal mark), tab
# ("Unicode text" exports), "|". In this order, ties go to the first.
DELIMITERS = (",", ";", "\t", "|")
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


def sniff_delimiter(header: str) -> str:
    """The delimiter of a CSV from its header line: whichever of `DELIMITERS` it holds most
    often outside double quotes (ties to the first of them; none at all: ","). Only the header
    is looked at: its cells are names, so they rarely hold a delimiter themselves, where data
    cells (addresses with display names, numbers with decimal commas) often do; csv.Sniffer
    guesses from data and often guesses wrong."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))
    return best if counts[best] else ","


def _codec(encoding: str) -> str:
    """The codec a list is read with: UTF-8 skips a BOM (what Windows tools write first)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _undecodable(encoding: str, detail: str = "") -> str:
    """Why a list does not decode, with what to do about it."""
    if codecs.lookup(encoding).name == "utf-8":
        hint = "save the list as UTF-8, or set recipients_encoding"
        return f"not valid UTF-8 text{detail} ({hint})"
    return f"not valid {encoding} text{detail} (recipients_encoding: is it in another one?)"


class _Reader:
    """The thread-side half: an open file and its CSV reader, read a batch at a time."""

    def __init__(
        self,
        path: Path,
        column: str,
        name_column: str,
        encoding: str = DEFAULT_ENCODING,
        delimiter: str | None = None,
    ) -> None:
        self.path = path
        self.handle: IO[str] = open(path, encoding=_codec(encoding), newline="")  # noqa: SIM115
        self.is_csv = path.suffix.lower() == ".csv"
        self.rows: Iterator[list[str]] = iter(())
        self.header: list[str] = []
        self.delimiter = delimiter or ","
        self.column = 0
        self.name = -1
        self.line = 0
        try:
            # A BOM the codec does not take itself (utf-16-le given for a list with one) is
            # no part of the first line.
            if self.handle.read(1) != "\ufeff":
                self.handle.seek(0)
            if self.is_csv:
                first = self.handle.readline(MAX_LINE + 1)
                self.delimiter = delimiter or sniff_delimiter(first)
                # The header line read for sniffing goes first, then the rest of the file.
                lines = itertools.chain([first], self.handle) if first else self.handle
                self.rows = csv.reader(lines, delimiter=self.delimiter)
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
        """Add one non-blank row to `rows`, or say why it is bad.

        A row shorter than the header gets empty cells for the ones it lacks (spreadsheets
        leave out trailing empty cells); a longer one is refused unless its extra cells are
        empty (a trailing delimiter), as they would be a value without a column: most likely
        a delimiter inside an unquoted cell, which shifts every cell after it."""
        width = len(self.header)
        if len(row) < width:
            row += [""] * (width - len(row))
        elif len(row) > width:
            if any(cell.strip() for cell in row[width:]):
                return BadRow(
                    self.path,
                    line,
                    self.delimiter.join(row),
                    f"expected {width} columns, found {len(row)}",
                )
            del row[width:]
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


def _scan(path: Path, encoding: str = DEFAULT_ENCODING) -> None:
    """Check the whole file decodes in `encoding` without NUL characters, counting lines in
    the decoded text to name the first bad one (a UTF-16 line ending is two bytes)."""
    factory = codecs.getincrementaldecoder(_codec(encoding))
    decoder = factory()
    lines = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            state = decoder.getstate()
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                line = lines + _lines_before(factory, state, err) + 1
                detail = ": the file ends inside a character" if not chunk else ""
                raise InputError(_undecodable(encoding, detail), path=path, line=line) from None
            if "\x00" in text:
                line = lines + text.count("\n", 0, text.index("\x00")) + 1
                raise InputError("contains a NUL byte; is it a text file?", path=path, line=line)
            if not chunk:
                return
            lines += text.count("\n")


def _lines_before(
    factory: Callable[[], codecs.IncrementalDecoder],
    state: tuple[bytes, int],
    err: UnicodeDecodeError,
) -> int:
    """The line endings in what decoded before `err`: its bytes up to the bad ones (the
    decoder's leftover bytes and the chunk, as the decoder saw them) decoded again from the
    state the chunk began in (which, for UTF-16, knows the byte order)."""
    probe = factory()
    probe.setstate((b"", state[1]))
    try:
        return probe.decode(err.object[: err.start]).count("\n")
    except UnicodeDecodeError:  # not expected: the bytes before it did decode
        return 0


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
        encoding: str = DEFAULT_ENCODING,
        delimiter: str | None = None,
    ) -> None:
        """`encoding`: a Python codec name (checked by the config); `delimiter`: a CSV's,
        or None to sniff it from the header line (`sniff_delimiter`)."""
        self.path = path
        self.column = column
        self.name_column = name_column
        self.encoding = encoding
        self.delimiter = delimiter
        self.bad_rows = 0
        self.columns: tuple[str, ...] = ()  # a CSV's header, once iteration has begun

    async def scan(self) -> None:
        """Read the whole file once in a thread.

        :raises InputError: missing file, not in its encoding, NUL byte (with the line).
        """
        try:
            await asyncio.to_thread(_scan, self.path, self.encoding)
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
            reader = await asyncio.to_thread(
                _Reader, self.path, self.column, self.name_column, self.encoding, self.delimiter
            )
        except OSError as err:
            raise InputError(
                f"cannot read the recipient list: {err.strerror}", path=self.path
            ) from None
        except UnicodeDecodeError:  # in the header line: `scan()` was not called first
            raise InputError(_undecodable(self.encoding), path=self.path, line=1) from None
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
            text = _undecodable(self.encoding, " from here on any more").partition(" (")[0]
            problem = f"{text}: was the list changed while it was read?"
        raise InputError(problem, path=self.path, line=first)
