"""The Ledger seam: where a campaign's recipients and their states are kept, durably.

The run (`run/`) decides; a ledger stores. `journal.sqlite.Journal` is the embedded SQLite
implementation; a shared one (PostgreSQL) implements the same interface. A recipient goes
``pending`` -> ``inflight`` (claimed, committed before MAIL FROM) -> ``data`` (committed
before the final ``.``) -> ``accepted`` / ``refused`` / ``deferred`` / ``unknown``; a ledger
never lets a ``data`` row be claimed again (it may have been delivered). A claimed recipient
the run finds suppressed goes ``inflight`` -> ``suppressed``, never sent (recorded like any
other decision: a ledger stores the state, the run decides it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .addresses import Mailbox
from .results import ResultPage

__all__ = [
    "LEASE",
    "Added",
    "ConnectionBank",
    "Decision",
    "JournalState",
    "Ledger",
    "Pacer",
    "QuotaBank",
    "WorkItem",
    "first_rows",
]

# Seconds a worker's hold on what it claimed from a shared ledger lasts without a heartbeat
# (`--lease`): a worker that died is noticed after it.
LEASE = 30.0


class JournalState(StrEnum):
    """A recipient's state in the ledger: the report's statuses, and two of its own."""

    PENDING = "pending"  # still to send (in this run or a later one)
    INFLIGHT = "inflight"  # claimed for a transaction; the server never saw the final "."
    DATA = "data"  # the final "." may have been written; the reply is not recorded yet
    ACCEPTED = "accepted"
    REFUSED = "refused"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"
    SUPPRESSED = "suppressed"  # never sent: suppressed when the run came to it
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One transaction to run: a group's due recipients and the group's own Message-ID."""

    group: int
    message_id: str
    headers: bool  # the config's group: To/Cc come from the config
    ids: tuple[int, ...]
    recipients: tuple[Mailbox, ...]
    attempts: int  # the most any of them has had in this run
    fields: tuple[Mapping[str, str], ...] = ()  # each one's list row, when kept (personalize)


class Decision(NamedTuple):
    """What to store of one recipient after a transaction, as the run's policy decided it.

    The field order is the order a ledger's bulk statement reads (see `journal.schema`)."""

    state: JournalState
    code: int | None
    message: str
    tried: int  # 1: counts as a try (in all and in this run), 0: not
    at: float  # when (the first try's time is kept)
    next_try: float  # when it is due again (0: now; `NEVER`: not in this run)
    relay: str  # the relay that answered ("": none did, the stored one stays)
    id: int


class Added(NamedTuple):
    """What a load call added: recipients new to the ledger, and duplicates in this load."""

    new: int
    duplicates: int


def first_rows(keys: Sequence[str]) -> Sequence[int]:
    """The number of each key's first row in a load batch: all of them, unless a key is there
    twice (the later ones are the batch's duplicates)."""
    if len(set(keys)) == len(keys):
        return range(len(keys))
    first: dict[str, int] = {}
    for number, key in enumerate(keys):
        first.setdefault(key, number)
    return list(first.values())


class FailureLatch:
    """The first failure of a ledger's queued writes, kept (`Ledger.failure`) and told once to
    each callback (`Ledger.on_failure`): what both ledgers share. `wrap` makes the ledger's
    own error of a driver's (the driver's stays its ``__cause__``)."""

    def __init__(self, wrap: Callable[[BaseException], BaseException]) -> None:
        self.failure: BaseException | None = None
        self._wrap = wrap
        self._callbacks: list[Callable[[BaseException], object]] = []

    def on_failure(self, callback: Callable[[BaseException], object]) -> None:
        self._callbacks.append(callback)

    def watch(self, future: asyncio.Future[Any]) -> None:
        """Latch the failure of a queued write nobody awaits."""
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and (error := future.exception()) is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        if self.failure is not None:
            return
        failure = self._wrap(error)
        if failure is not error:
            failure.__cause__ = error
        self.failure = failure
        for callback in self._callbacks:
            callback(failure)


NEVER = 1e18  # `Decision.next_try` of a recipient given up on for this run


class Ledger(Protocol):
    """The storage a run uses. Methods that return a coroutine are awaited for their
    answer; `record`, `unmark_data` and `count_sent` are queued (requests run in the order
    given), and a failure of one of them is latched: `failure` holds it and every callback
    given to `on_failure` is called once."""

    @property
    def failure(self) -> BaseException | None: ...

    def on_failure(self, callback: Callable[[BaseException], object]) -> None: ...

    # loading: `begin_load()` is False when another process of a shared ledger loads the
    # list (or loaded it already): then `loading()` says whether it is still being read.
    async def begin_load(self) -> bool: ...
    async def loading(self) -> bool: ...
    async def add_config_group(self, mailboxes: Sequence[Mailbox]) -> Added: ...
    async def add_list(
        self,
        mailboxes: Sequence[Mailbox],
        group_size: int,
        fields: Sequence[Mapping[str, str]] | None = None,
    ) -> Added: ...
    async def end_load(self, bad_rows: int = 0, *, cut_short: bool = False) -> None: ...

    # a run
    async def start_run(self, *, resend_unknown: bool) -> dict[JournalState, int]: ...
    async def claim(self, limit: int, now: float) -> list[WorkItem]: ...
    async def mark_data(self, ids: Sequence[int]) -> None: ...
    def unmark_data(self, ids: Sequence[int]) -> None: ...
    def record(self, decisions: Sequence[Decision]) -> None: ...
    async def release(self, item: WorkItem) -> None: ...
    async def requeue_refused(self, codes: Sequence[str] = ()) -> int: ...
    async def next_due(self) -> float | None: ...

    # the daily quota
    async def sent_on(self, day: str) -> int: ...
    def count_sent(self, day: str, count: int) -> None: ...

    # reading back
    async def counts(self) -> Counter[JournalState]: ...
    async def results(self, after: int = 0, limit: int = 5000) -> ResultPage: ...


@runtime_checkable
class Pacer(Protocol):
    """A ledger shared by workers (on any number of hosts) that paces them together: the
    campaign's `rate` is handed out as slots, reserved in batches."""

    async def reserve_slots(self, count: int, interval: float, key: str = "") -> float:
        """Reserve `count` message slots `interval` seconds apart, after every slot reserved
        before by any worker; returns the seconds from now to the first (0 or less: due).
        `key` names whose rate: "" the campaign's, ``@name`` a relay's."""
        ...


@runtime_checkable
class QuotaBank(Protocol):
    """A ledger shared by workers that hands out the campaign's daily quota in parts, so
    that all of them together stay within it."""

    async def reserve_quota(self, day: str, count: int, limit: int) -> int:
        """Count up to `count` more recipients tried on `day` (YYYY-MM-DD, and ``@name`` for
        a relay's own quota), as long as the day's total stays within `limit`; returns how
        many were granted (0: none left). Unused ones go back with
        `Ledger.count_sent(day, -n)`."""
        ...


@runtime_checkable
class ConnectionBank(Protocol):
    """A ledger shared by workers that shares out the campaign's `max_connections`."""

    async def reserve_connections(self, wants: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        """Hold, for each key of `wants`, up to `count` of its `limit` connections for this
        worker (until it ends); returns how many of each, or 0 for every key when any one of
        them has none free (all are held by other workers): a worker never holds some while
        it waits for the rest. A key names whose: "" the campaign's, ``@name`` a relay's."""
        ...
