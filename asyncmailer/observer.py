"""The Observer interface: what a run tells as it goes (progress, report files)."""

from __future__ import annotations

from collections.abc import Sequence

from .results import RecipientResult

__all__ = ["Observer"]


class Observer:
    """What a run tells as it goes. Subclass and override what you need."""

    async def started(self, expected: int | None) -> None:
        """Sending begins; `expected` is how many recipients this run has to try, or None
        while a long list is still being read (then `counted()` gives it)."""

    async def counted(self, expected: int) -> None:
        """The list is read: `expected` recipients in all for this run (after `started()`)."""

    async def relay(self, name: str, rate: float | None, connections: int) -> None:
        """A relay's adaptive limits as they are now (at the start, and each time they are
        cut or grow by a whole step): messages per second (None: not paced) and
        connections at once."""

    async def results(self, results: Sequence[RecipientResult]) -> None:
        """Results of one transaction (or skipped or suppressed recipients), as they come."""

    async def final(self, results: Sequence[RecipientResult]) -> None:
        """At the end, every recipient's standing (this run's and earlier runs'), a page at a
        time in list order, bad list rows first: what the report holds."""
