"""What happened to each recipient: statuses, per-recipient results and the campaign summary."""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import overload

from .display import printable, shorten
from .errors import DeliveryError

__all__ = ["CampaignReport", "RecipientResult", "ResultPage", "Status", "code_class", "plural"]


def plural(count: int, word: str) -> str:
    """``1 message``, ``2 messages``, ``1,200 messages``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


class Status(StrEnum):
    """The answer for one recipient. Every feature reports with these words."""

    ACCEPTED = "accepted"  # the server took responsibility for delivery (250 after DATA)
    REFUSED = "refused"  # permanent failure (5xx): do not send again
    DEFERRED = "deferred"  # temporary failure (4xx, connection lost before the end of DATA)
    UNKNOWN = "unknown"  # the connection died after the final "." and before the reply
    SUPPRESSED = "suppressed"  # never sent: in the suppression file or the shared store
    SKIPPED = "skipped"  # not sent for a reason of its own (a bad list row); the message says why
    NOT_ATTEMPTED = "not attempted"  # the run never got to it (stopped early, or not yet)


# The RFC 3463 code a reply's text starts with (as `smtp.refusals.enhanced_code` reads it).
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.\d{1,3}(?![\d.])")


def code_class(code: int | None, message: str) -> str:
    """A failure's class for a summary: its enhanced code's class and subject (``5.1.x``),
    else its reply code (``550``), else ``no reply`` (the connection was lost)."""
    match = _ENHANCED.match(message)
    if match:
        return f"{match[1]}.{match[2]}.x"
    return str(code) if code is not None else "no reply"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome with the server's own code and text, when there was one."""

    recipient: str
    status: Status
    code: int | None = None
    message: str = ""
    attempts: int = 1
    relay: str = ""  # the relay that answered (read back from the ledger; "": none)

    def __str__(self) -> str:
        return self.line()

    def line(self, status: str | None = None) -> str:
        """One line, safe to print: control characters escaped, long texts shortened;
        `status` in place of the status's own word."""
        code = f" {self.code}" if self.code is not None else ""
        text = f" {shorten(printable(self.message), 300)}" if self.message else ""
        word = self.status.value if status is None else status
        return f"{word:<8} {shorten(printable(self.recipient), 200)}{code}{text}"

    def as_row(self) -> dict[str, str | int | None]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "code": self.code,
            "message": self.message,
            "relay": self.relay,
        }


# A row of a `ResultPage`: what a ledger reads back for one recipient.
ResultRow = tuple[int, str, str, int | None, str, int, str]  # id, recipient, status, code,
# message, attempts, relay
_STATUSES = {status.value: status for status in Status}
_REPORT_COLUMNS = operator.itemgetter(1, 2, 3, 4, 6)  # recipient, status, code, message, relay
_STATUS_COLUMN = operator.itemgetter(2)


class ResultPage(Sequence[RecipientResult]):
    """A page of results as a ledger reads them back at the end of a run: plain rows (see
    `ResultRow`, in row id order), each made a `RecipientResult` only when it is looked at.

    A long list's final read is a million rows, nearly all accepted: the report counts them
    (`counts()`), keeps the first ones and the problems (`not_accepted()`), and the report file
    writes their columns as they are (`report_rows()`), without an object per row.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: list[ResultRow]) -> None:
        self.rows = rows

    def __repr__(self) -> str:
        return f"<ResultPage of {len(self.rows)}>"

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> RecipientResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[RecipientResult]: ...
    def __getitem__(self, index: int | slice) -> RecipientResult | list[RecipientResult]:
        if isinstance(index, slice):
            return [_result(row) for row in self.rows[index]]
        return _result(self.rows[index])

    def __iter__(self) -> Iterator[RecipientResult]:
        return map(_result, self.rows)

    @property
    def last_id(self) -> int:
        """The row id of the last row: the next page starts after it."""
        return self.rows[-1][0]

    def counts(self) -> Counter[Status]:
        return Counter(
            {_STATUSES[s]: n for s, n in Counter(map(_STATUS_COLUMN, self.rows)).items()}
        )

    def not_accepted(self) -> Iterator[RecipientResult]:
        accepted = Status.ACCEPTED.value
        return (_result(row) for row in self.rows if row[2] != accepted)

    def report_rows(self) -> Iterator[tuple[str, str, int | None, str, str]]:
        """Each row as the report file's columns (`report.REPORT_FIELDS`)."""
        return map(_REPORT_COLUMNS, self.rows)


def _result(row: ResultRow) -> RecipientResult:
    _, recipient, status, code, message, attempts, relay = row
    return RecipientResult(recipient, _STATUSES[status], code, message, attempts, relay)


# Not problems to show in the final table: the run never got to them, or they are not to be
# sent at all.
_NOT_PROBLEMS = (Status.ACCEPTED, Status.NOT_ATTEMPTED, Status.SUPPRESSED)
_FAILURES = (Status.REFUSED, Status.DEFERRED)  # counted by code class too


@dataclass(slots=True)
class CampaignReport:
    """The outcome of a run: exact counts for every recipient, and the results themselves up to
    `keep` of them (all of them for a small campaign; a long list's go to the report file).

    `counts` is every recipient's standing in the journal (this run's and earlier runs');
    `this_run` counts what this run told as it went (`Observer.results`), and `messages` the
    messages the server took (for at least one recipient), over `started` to `ended`
    (time.time()).
    """

    keep: int = 10_000
    results: list[RecipientResult] = field(default_factory=list)
    problems: list[RecipientResult] = field(default_factory=list)  # first `keep` not accepted
    counts: Counter[Status] = field(default_factory=Counter)
    # Refused and deferred recipients by `code_class` (``5.1.x``, ``550``, ``no reply``).
    classes: Counter[tuple[Status, str]] = field(default_factory=Counter)
    total: int = 0
    duplicates: int = 0
    # Set when the run had to stop early (server unreachable, TLS refused, login failed).
    fatal: DeliveryError | None = None
    journal: Path | None = None
    bad_rows: list[RecipientResult] = field(default_factory=list)  # this run's bad list rows
    quota_reached: bool = False  # the run stopped at the daily quota
    limit_reached: bool = False  # the run stopped at its message limit (--limit)
    # The run stopped before the list was read to its end: it was read up to this line.
    list_read_to: int | None = None
    this_run: Counter[Status] = field(default_factory=Counter)
    messages: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def not_attempted(self) -> int:
        """Recipients the run never got to (it stopped early)."""
        return self.counts[Status.NOT_ATTEMPTED]

    def add(self, results: Iterable[RecipientResult]) -> None:
        if isinstance(results, ResultPage):
            self._add_page(results)
            return
        batch = list(results)
        self.total += len(batch)
        if len(self.results) < self.keep:
            self.results.extend(batch[: self.keep - len(self.results)])
        counts = self.counts
        for result in batch:
            counts[result.status] += 1
            if result.status is Status.ACCEPTED:  # most of a long list: nothing more to note
                continue
            self._note(result)

    def _add_page(self, page: ResultPage) -> None:
        """As `add()`, making objects only of the rows it keeps (and of those not accepted)."""
        self.total += len(page)
        if len(self.results) < self.keep:
            self.results.extend(page[: self.keep - len(self.results)])
        self.counts.update(page.counts())
        for result in page.not_accepted():
            self._note(result)

    def _note(self, result: RecipientResult) -> None:
        """A result not accepted: its class when it failed, kept when it is a problem."""
        if result.status in _FAILURES:
            self.classes[result.status, code_class(result.code, result.message)] += 1
        if result.status not in _NOT_PROBLEMS and len(self.problems) < self.keep:
            self.problems.append(result)

    @property
    def complete(self) -> bool:
        """Every result is in `results`."""
        return len(self.results) == self.total

    @property
    def all_accepted(self) -> bool:
        """Every recipient was accepted, or is suppressed (not to be sent: nothing failed)."""
        counts = self.counts
        return (
            self.fatal is None
            and self.total > 0
            and counts[Status.ACCEPTED] + counts[Status.SUPPRESSED] == self.total
        )

    def summary(self) -> str:
        """``5,000 recipients: 560 accepted, 2 refused, 4,438 not attempted yet``"""
        parts = [
            f"{self.counts[s]:,} {s.value}{' yet' if s is Status.NOT_ATTEMPTED else ''}"
            for s in Status
            if self.counts[s] > 0
        ]
        text = f"{plural(self.total, 'recipient')}: " + (", ".join(parts) or "none")
        if self.duplicates:
            text += f" ({plural(self.duplicates, 'duplicate')} in the list sent once)"
        if self.list_read_to is not None:
            text += (
                f"; the run stopped with the list read up to line {self.list_read_to:,}: "
                "the next run reads and sends the rest"
            )
        return text
