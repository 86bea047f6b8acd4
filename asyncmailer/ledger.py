"""The Ledger seam: where a campaign's recipients and their states are kept, durably.

The run (`run/`) decides; a ledger stores. `journal.sqlite.Journal` is the embedded SQLite
implementation; a shared one (PostgreSQL) implements the same interface. A recipient goes
``pending`` -> ``inflight`` (claimed, committed before MAIL FROM) -> ``data`` (committed
before the final ``.``) -> ``accepted`` / ``refused`` / ``deferred`` / ``unknown``; a ledger
never lets a ``data`` row be claimed again (it may have been delivered).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from .addresses import Mailbox
from .results import ResultPage

__all__ = ["Added", "Decision", "JournalState", "Ledger", "WorkItem"]


class JournalState(StrEnum):
    """A recipient's state in the ledger: the report's statuses, and two of its own."""

    PENDING = "pending"  # still to send (in this run or a later one)
    INFLIGHT = "inflight"  # claimed for a transaction; the server never saw the final "."
    DATA = "data"  # the final "." may have been written; the reply is not recorded yet
    ACCEPTED = "accepted"
    REFUSED = "refused"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"
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


NEVER = 1e18  # `Decision.next_try` of a recipient given up on for this run


class Ledger(Protocol):
    """The storage a run uses. Methods that return a coroutine are awaited for their
    answer; `record`, `unmark_data` and `count_sent` are queued (requests run in the order
    given), and a failure of one of them is latched: `failure` holds it and every callback
    given to `on_failure` is called once."""

    @property
    def failure(self) -> BaseException | None: ...

    def on_failure(self, callback: Callable[[BaseException], object]) -> None: ...

    # loading
    async def begin_load(self) -> None: ...
    async def add_config_group(self, mailboxes: Sequence[Mailbox]) -> Added: ...
    async def add_list(
        self,
        mailboxes: Sequence[Mailbox],
        group_size: int,
        fields: Sequence[Mapping[str, str]] | None = None,
    ) -> Added: ...
    async def end_load(self) -> None: ...

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
