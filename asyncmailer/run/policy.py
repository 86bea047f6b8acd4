"""What the run decides: when a temporary failure is tried again, what a transaction's results
mean for each recipient's stored state, and which failures stop the run."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from aiosmtplib import SMTPStatus

from ..config import Campaign
from ..errors import ConnectError
from ..ledger import NEVER, Decision, JournalState, WorkItem
from ..results import RecipientResult, Status

__all__ = [
    "MAX_RETRY_DELAY",
    "Retry",
    "decide",
    "later",
    "stops_the_run",
    "suppressed",
    "unsent",
]

MAX_RETRY_DELAY = 300.0
# A transaction's results as stored states (`not attempted` is pending: to send).
_STATE = {
    status: JournalState(status.value)
    for status in Status
    if status.value in JournalState._value2member_map_
}
_STATE[Status.NOT_ATTEMPTED] = JournalState.PENDING
_ACCEPTED = JournalState.ACCEPTED


class Retry:
    """Exponential backoff with jitter, bounded by attempts and by time in this run (its
    `deadline` on `time.monotonic()`; the times of next tries are wall-clock times, kept in
    the ledger across runs)."""

    def __init__(self, campaign: Campaign) -> None:
        self.attempts = campaign.retry_attempts
        self.delay = campaign.retry_delay
        self.deadline = time.monotonic() + campaign.retry_max_age

    def at(self, attempt: int) -> float | None:
        """When try number `attempt + 1` is due, or None: no more tries in this run."""
        if attempt >= self.attempts:
            return None
        delay = min(self.delay * 2.0 ** (attempt - 1), MAX_RETRY_DELAY) * random.uniform(0.8, 1.2)
        if time.monotonic() + delay > self.deadline:
            return None
        return time.time() + delay


def decide(
    item: WorkItem, results: Sequence[RecipientResult], retry: Retry, relay: str = ""
) -> list[Decision]:
    """Each recipient's row after a transaction through `relay`: its state, whether it counts
    as a try, and when a deferred one is due again (never again in this run once the tries
    are used up)."""
    now = time.time()
    decisions = []
    progress: bool | None = None  # someone in the transaction was accepted (asked once)
    for row_id, result in zip(item.ids, results, strict=True):
        if result.status is Status.ACCEPTED:  # most of them: one tuple, no questions
            decisions.append(
                Decision(_ACCEPTED, result.code, result.message, 1, now, 0.0, relay, row_id)
            )
            continue
        state = _STATE[result.status]
        next_try = 0.0
        tried = int(result.status is not Status.SKIPPED or result.attempts > 0)
        if result.status is Status.DEFERRED:
            if progress is None:
                progress = any(r.status is Status.ACCEPTED for r in results)
            if result.code == SMTPStatus.insufficient_storage and (
                progress or item.attempts + 1 < retry.attempts
            ):
                # 452: too many recipients for this transaction; the rest go at once in a new
                # one. Not a failed try while others got through; a server that says 452 to
                # everyone uses up the tries like any 4xx.
                state = JournalState.PENDING
                tried = int(not progress)
            else:
                when = retry.at(item.attempts + 1)
                next_try = NEVER if when is None else when
        decisions.append(
            Decision(state, result.code, result.message, tried, now, next_try, relay, row_id)
        )
    return decisions


def unsent(item: WorkItem, note: str) -> list[Decision]:
    """The item's rows back to pending, no try counted: the transaction did not happen as
    far as its recipients are concerned (the sender or the session was refused)."""
    now = time.time()
    return [
        Decision(JournalState.PENDING, None, note, 0, now, 0.0, "", row_id) for row_id in item.ids
    ]


def later(item: WorkItem, note: str, when: float) -> list[Decision]:
    """The item's rows pending until `when` (a timestamp), no try counted."""
    now = time.time()
    return [
        Decision(JournalState.PENDING, None, note, 0, now, when, "", row_id) for row_id in item.ids
    ]


def suppressed(ids: Sequence[int], notes: Sequence[str]) -> list[Decision]:
    """Claimed rows found suppressed: never sent, for good in this journal, no try counted."""
    now = time.time()
    return [
        Decision(JournalState.SUPPRESSED, None, note, 0, now, NEVER, "", row_id)
        for row_id, note in zip(ids, notes, strict=True)
    ]


def stops_the_run(err: ConnectError, *, connected: bool) -> bool:
    """A connection that cannot be opened stops the run only while none has worked yet (a
    wrong host, port or certificate) and the server did not just say it is busy (4xx)."""
    return not connected and not (err.code and 400 <= err.code < 500)
