"""Telling the user how a run goes: a line per recipient for a small campaign, a progress bar on
a terminal (rich) or a plain periodic line otherwise for a list, and the report file."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from .display import printable
from .observer import Observer
from .report import ReportWriter
from .results import RecipientResult, Status

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["ConsoleObserver"]

PLAIN_INTERVAL = 5.0  # seconds between progress lines when not on a terminal


class ConsoleObserver(Observer):
    """Shows progress on `stream` (stderr) and appends every result to the report file as it
    comes (`writer`); at the end, every recipient's standing goes to `full_report`."""

    def __init__(
        self,
        *,
        writer: ReportWriter | None = None,
        full_report: ReportWriter | None = None,
        per_recipient: bool = True,
        quiet: bool = False,
        stream: TextIO = sys.stderr,
        interval: float = PLAIN_INTERVAL,
        names: Mapping[Status, str] | None = None,
    ) -> None:
        """`names`: a status shown under another word (a dry run's `accepted` is `written`)."""
        self.writer = writer
        self.names = {s: s.value for s in Status} | dict(names or {})
        self.full_report = full_report
        self.per_recipient = per_recipient
        self.quiet = quiet
        self.stream = stream
        self.interval = interval
        self.counts: Counter[Status] = Counter()
        self.done = 0
        self.expected: int | None = None
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        # Each relay's adaptive limits as last told: (messages/s or None, connections).
        self.relays: dict[str, tuple[float | None, int]] = {}

    async def started(self, expected: int | None) -> None:
        self.expected = expected
        self._started = self._last_line = time.monotonic()
        if expected == 0:
            self._nothing_left()
            return
        if self.quiet or self.per_recipient or not self.stream.isatty():
            return
        # Imported only for a terminal: rich takes a noticeable part of start-up.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._bar.add_task("send", total=expected, counts="", rate="")
        self._bar.start()

    async def counted(self, expected: int) -> None:
        """The list is read: the bar and the ETA get their total."""
        self.expected = expected
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=expected)
        if expected == 0:
            self._nothing_left()

    def _nothing_left(self) -> None:
        if not self.quiet:
            print(
                "asyncmailer: nothing left to send: the journal has an answer for every "
                "recipient (--restart sends the campaign again)",
                file=self.stream,
            )

    async def relay(self, name: str, rate: float | None, connections: int) -> None:
        self.relays[name] = (rate, connections)

    def describe_relays(self) -> str:
        """``via gmail 48/s x3, isp 120/s x4``: each relay's current rate and connections,
        when there are several or one is paced (adaptive throttling, docs/design.md)."""
        if len(self.relays) < 2 and all(rate is None for rate, _ in self.relays.values()):
            return ""
        return "via " + ", ".join(
            f"{printable(name)} {'unpaced' if rate is None else f'{rate:,.0f}/s'} x{conns}"
            for name, (rate, conns) in self.relays.items()
        )

    async def results(self, results: Sequence[RecipientResult]) -> None:
        if self.writer is not None:
            self.writer.append(results)  # written in the background: sending goes on
        for result in results:
            self.counts[result.status] += 1
            # A deferral is not an answer yet: it will be tried again.
            self.done += result.status is not Status.DEFERRED
        if self.quiet:
            return
        if self.per_recipient:
            for result in results:
                print(f"  {result.line(self.names[result.status])}", file=self.stream)
        elif self._bar is not None and self._task is not None:
            relays = self.describe_relays()
            self._bar.update(
                self._task,
                completed=self.done,
                counts=self.describe(),
                rate=f"{self.rate()} {relays}" if relays else self.rate(),
            )
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            print(f"asyncmailer: {self.line()}", file=self.stream, flush=True)

    async def final(self, results: Sequence[RecipientResult]) -> None:
        if self.full_report is not None:
            await self.full_report.keep_up(results)  # pages do not pile up in memory

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not (self.quiet or self.per_recipient or self.expected == 0):
            print(f"asyncmailer: {self.line(final=True)}", file=self.stream, flush=True)

    def describe(self) -> str:
        """``1,200 accepted, 3 refused, 7 deferrals`` (a recipient may be deferred twice)."""
        return ", ".join(
            f"{self.counts[s]:,} {'deferrals' if s is Status.DEFERRED else self.names[s]}"
            for s in Status
            if self.counts[s]
        )

    def rate(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return f"{self.done / elapsed:,.0f} recipients/s"

    def line(self, *, final: bool = False) -> str:
        """``1,234/10,000 recipients (1,200 accepted, 34 refused), 456 recipients/s, ETA 19s;
        via gmail 48/s x3, isp unpaced x4``"""
        total = f"/{self.expected:,}" if self.expected else ""
        text = f"{self.done:,}{total} recipients ({self.describe() or 'none yet'}), {self.rate()}"
        elapsed = time.monotonic() - self._started
        if not final and self.expected and self.done and self.expected > self.done:
            remaining = elapsed / self.done * (self.expected - self.done)
            text += f", ETA {_duration(remaining)}"
        relays = self.describe_relays()
        if relays and not final:
            text += f"; {relays}"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
