"""The `Ledger` contract, run against both implementations: the SQLite journal and the
shared PostgreSQL ledger (a real server, tests/postgres.py). Loading (each address once,
groups without gaps, the load fence), claims, "past DATA", results and what a stopped run
leaves, as the next one sees them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.journal import Journal
from asyncmailer.ledger import Decision, JournalState, Ledger
from asyncmailer.ledger_url import LedgerUrl
from asyncmailer.results import Status

from .conftest import load_and_accept


class Opener(Protocol):
    """Opens the ledger; `reload_list`: as a run that reads its list again (the SQLite
    journal's every run does; a shared ledger's when the list changed)."""

    def __call__(self, *, reload_list: bool = False) -> AbstractAsyncContextManager[Ledger]: ...


def boxes(*numbers: int, host: str = "example.com") -> list[Mailbox]:
    return [Mailbox(f"user{n}@{host}") for n in numbers]


async def groups(ledger: Ledger) -> list[list[str]]:
    items = await ledger.claim(1000, now=0.0)
    return [[m.addr for m in item.recipients] for item in items]


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the same ledger again each time it is called (a run, then the next one)."""
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite(*, reload_list: bool = False) -> AsyncIterator[Ledger]:
            async with await Journal.open(tmp_path / "j.sqlite") as journal:
                yield journal

        yield sqlite
        return
    import psycopg

    from asyncmailer.pg import PgLedger
    from asyncmailer.pg.runs import PgRuns
    from asyncmailer.run_choice import RunRequest

    url = LedgerUrl(request.getfixturevalue("pg_url"))
    async with PgRuns(url, "contract") as runs:
        serial = runs.serial(await runs.begin(RunRequest(campaign="contract", current={})))

    @asynccontextmanager
    async def postgresql(*, reload_list: bool = False) -> AsyncIterator[Ledger]:
        if reload_list:  # as `PgRuns.begin` does for a run whose list is read again
            async with await psycopg.AsyncConnection.connect(url.reveal()) as conn:
                await conn.execute(
                    "DELETE FROM asyncmailer_meta WHERE run = %s AND key = 'load:done'", (serial,)
                )
        async with await PgLedger.open(url, campaign="contract", run=serial) as ledger:
            yield ledger

    yield postgresql


async def test_a_load_sends_each_address_once_and_fills_groups_without_gaps(
    open_ledger: Opener,
) -> None:
    async with open_ledger() as ledger:
        assert await ledger.begin_load()
        first = await ledger.add_list([*boxes(1, 2, 3, 2), Mailbox("USER1@example.com")], 2)
        second = await ledger.add_list([*boxes(3, 4), *boxes(5)], 2)
        assert (first.duplicates, second.duplicates) == (2, 1)
        assert first.new + second.new == 5
        # While the list is read, the group still being filled is not handed out.
        assert await groups(ledger) == [
            ["user1@example.com", "user2@example.com"],
            ["user3@example.com", "user4@example.com"],
        ]
        await ledger.add_list(boxes(6, 7), 2)
        assert await groups(ledger) == [["user5@example.com", "user6@example.com"]]
        await ledger.end_load()
        assert not await ledger.loading()
        assert await groups(ledger) == [["user7@example.com"]]


async def test_while_a_resumed_list_is_read_only_its_new_groups_go(open_ledger: Opener) -> None:
    async with open_ledger() as ledger:
        await ledger.begin_load()
        await ledger.add_list(boxes(1, 2, 3), 1)  # then the run stopped: all still pending
    async with open_ledger() as ledger:
        assert await ledger.begin_load()
        await ledger.add_list(boxes(4, 5, 6), 1)  # new rows; 1-3 are further down the list
        # Rows from the earlier load wait until they are read again (personalised messages
        # use the row as read now); the newest group may still grow.
        assert await groups(ledger) == [["user4@example.com"], ["user5@example.com"]]
        again = await ledger.add_list(boxes(1, 2, 3), 1, [{"n": "new"}] * 3)
        assert again == (0, 0)  # neither new nor duplicates: known from the earlier load
        await ledger.end_load()
        assert [item.fields for item in await ledger.claim(10, now=0.0)] == [
            ({"n": "new"},),
            ({"n": "new"},),
            ({"n": "new"},),
            ({},),
        ]


async def test_an_address_from_an_earlier_load_is_not_a_duplicate_nor_sent_again(
    open_ledger: Opener,
) -> None:
    async with open_ledger() as ledger:
        await load_and_accept(ledger, boxes(1, 2))
        await ledger.counts()  # the results are written
    async with open_ledger(reload_list=True) as ledger:
        await ledger.start_run(resend_unknown=False)
        assert await ledger.begin_load()
        # The list read again, changed: one new address, one gone (user2).
        assert await ledger.add_list(boxes(1, 3), 10) == (1, 0)
        await ledger.end_load()
        assert await groups(ledger) == [["user3@example.com"]]
        assert (await ledger.counts())[JournalState.ACCEPTED] == 2


async def test_a_long_load_counts_duplicates_in_a_batch_and_across_batches(
    open_ledger: Opener,
) -> None:
    # Thousands of addresses a batch, half of them known from an earlier load.
    async with open_ledger() as ledger:
        await ledger.begin_load()
        assert await ledger.add_list(boxes(*range(0, 3000, 2)), 100) == (1500, 0)
    async with open_ledger() as ledger:
        assert await ledger.begin_load()
        upper = [Mailbox(f"USER{n}@EXAMPLE.COM") for n in range(10)]  # the case is no key
        first = await ledger.add_list(boxes(*range(3000)) + upper, 100)
        assert first == (1500, 10)
        second = await ledger.add_list([*boxes(2999, 3000, 3001, 3000), *upper[:2]], 100)
        assert second == (2, 4)  # 2999 in the batch before, 3000 twice here, two as above
        await ledger.end_load()
        assert (await ledger.counts())[JournalState.PENDING] == 3002
        items = await ledger.claim(1000, now=0.0)
    # The new rows fill groups of 100 without gaps, in list order, across the batches.
    assert sorted(len(item.recipients) for item in items) == [2] + [100] * 30
    assert items[-1].recipients == tuple(boxes(3000, 3001))


async def test_past_data_without_a_reply_is_unknown_after_a_stop(open_ledger: Opener) -> None:
    async with open_ledger() as ledger:
        await ledger.begin_load()
        await ledger.add_list(boxes(1, 2, 3), 1)
        await ledger.end_load()
        first, second, _third = await ledger.claim(3, now=0.0)
        await ledger.mark_data(first.ids)  # the final "." went out; no reply came
        await ledger.release(second)  # claimed, never sent: given back
    async with open_ledger() as ledger:
        changed = await ledger.start_run(resend_unknown=False)
        assert changed == {"inflight": 1, "data": 1}
        assert dict(await ledger.counts()) == {"unknown": 1, "pending": 2}
        assert await groups(ledger) == [["user2@example.com"], ["user3@example.com"]]
        page = await ledger.results()
    assert [r.status for r in page] == [Status.UNKNOWN, Status.NOT_ATTEMPTED, Status.NOT_ATTEMPTED]
    assert "may or may not have been delivered" in page[0].message


async def test_results_are_stored_and_deferred_ones_come_due(open_ledger: Opener) -> None:
    async with open_ledger() as ledger:
        await ledger.begin_load()
        await ledger.add_list([*boxes(1, 2, 3, 4), Mailbox("five@example.com", "Five")], 5)
        await ledger.end_load()
        (item,) = await ledger.claim(10, now=0.0)
        assert item.attempts == 0 and item.fields == ({},) * 5
        due = {item.ids[0]: 5.0, item.ids[1]: 3.0, item.ids[2]: 4.0, item.ids[4]: 3.5}
        ledger.record(
            [
                Decision(JournalState.DEFERRED, 451, "later", 1, 1.0, due[i], "", i)
                if i in due
                else Decision(JournalState.ACCEPTED, 250, "ok", 1, 1.0, 0.0, "relay-a", i)
                for i in item.ids
            ]
        )
        assert await ledger.next_due() == 3.0
        assert await ledger.claim(10, now=2.0) == []
        (again,) = await ledger.claim(10, now=10.0)
        assert again.ids == tuple(i for i in item.ids if i in due)
        assert again.recipients[-1] == Mailbox("five@example.com", "Five")
        assert again.attempts == 1 and again.message_id == item.message_id
        ledger.record(
            [Decision(JournalState.REFUSED, 550, "no", 1, 2.0, 0.0, "relay-b", again.ids[0])]
        )
        for i in again.ids[1:]:
            ledger.record([Decision(JournalState.ACCEPTED, 250, "ok", 1, 2.0, 0.0, "", i)])
        counts = await ledger.counts()
        assert counts == {"accepted": 4, "refused": 1}
        # The relay that answered is kept; a decision naming none keeps the one stored.
        relays = {r.recipient: r.relay for r in await ledger.results()}
        assert sorted(relays.values()) == ["", "", "", "relay-a", "relay-b"]
        assert await ledger.requeue_refused(["551"]) == 0
        assert await ledger.requeue_refused(["550"]) == 1
        assert (await ledger.counts())[JournalState.PENDING] == 1


async def test_the_daily_count_adds_up(open_ledger: Opener) -> None:
    async with open_ledger() as ledger:
        ledger.count_sent("2026-12-01", 5)
        ledger.count_sent("2026-12-01", -2)
        assert await ledger.sent_on("2026-12-01") == 3
        assert await ledger.sent_on("2026-12-02") == 0


async def test_a_caller_cancelled_while_its_mark_commits_leaves_the_others_theirs(
    open_ledger: Opener,
) -> None:
    async with open_ledger() as ledger:
        await ledger.begin_load()
        await ledger.add_list(boxes(1, 2), 1)
        await ledger.end_load()
        first, second = await ledger.claim(2, now=0.0)
        cancelled = asyncio.ensure_future(ledger.mark_data(first.ids))
        waiting = asyncio.ensure_future(ledger.mark_data(second.ids))
        await asyncio.sleep(0)
        cancelled.cancel()
        await waiting
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await ledger.counts())[JournalState.DATA] == 2
