"""The PostgreSQL ledger's own guarantees, on a real server: workers claiming at once never
share a group; a worker whose lease lapsed is fenced out (no "past DATA" commit, so no final
".", and no result over another worker's); what it held is reaped (in flight -> pending, past
DATA -> unknown); the schema is versioned; the password never shows."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psycopg
import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.config import load_campaign
from asyncmailer.errors import JournalError, LeaseLostError
from asyncmailer.ledger import Decision, JournalState, WorkItem
from asyncmailer.ledger_url import LedgerUrl
from asyncmailer.pg import PgLedger
from asyncmailer.pg.database import connect, migrate
from asyncmailer.pg.runs import PgRuns
from asyncmailer.pg.schema import LOAD, SCHEMA_VERSION, lock_key
from asyncmailer.run.campaign import RunOptions, run_campaign
from asyncmailer.run_choice import RunRequest

from ..conftest import CampaignFactory, StopOnFirstAnswer, plain_list_campaign, two_workers
from ..faulty import Faults, FaultyServer
from ..postgres import PASSWORD, CommitCutter, PgServer


@pytest.fixture
async def run(pg_url: str) -> int:
    async with PgRuns(LedgerUrl(pg_url), "fencing") as runs:
        return runs.serial(await runs.begin(RunRequest(campaign="fencing", current={})))


@pytest.fixture
async def two(pg_url: str, run: int) -> AsyncIterator[tuple[PgLedger, PgLedger]]:
    """Two workers of one run, the list (20 groups of 2) loaded by the first."""
    async with two_workers(pg_url, "fencing", run) as (a, b):
        assert await a.begin_load()
        assert not await b.begin_load()  # the first has it, and is alive
        assert await b.loading()
        await a.add_list([Mailbox(f"u{n}@example.com") for n in range(40)], 2)
        await a.end_load()
        assert not await b.loading() and not await b.begin_load()  # loaded once
        yield a, b


def _expire(url: str, lease: int) -> None:
    with psycopg.connect(url) as db:
        db.execute(
            "UPDATE asyncmailer_leases SET expires = now() - interval '1 s' WHERE id = %s", (lease,)
        )


async def test_workers_claiming_at_once_never_share_a_group(
    two: tuple[PgLedger, PgLedger],
) -> None:
    a, b = two
    claims = await asyncio.gather(*(w.claim(3, now=0.0) for _ in range(4) for w in (a, b)))
    groups = [item.group for batch in claims for item in batch]
    assert len(groups) == len(set(groups)) == 20
    assert sorted(groups) == list(range(1, 21))


async def test_a_lapsed_lease_is_fenced_out_and_what_it_held_is_reaped(
    two: tuple[PgLedger, PgLedger], pg_url: str
) -> None:
    a, b = two
    sent, claimed = await a.claim(2, now=0.0)
    await a.mark_data(sent.ids)  # its final "." went out; then the worker stalled
    _expire(pg_url, a.lease_id)
    with pytest.raises(LeaseLostError, match="lease on the ledger"):
        await a.mark_data(claimed.ids)  # so this one's "." is never written
    a.unmark_data(claimed.ids)
    assert await b.start_run(resend_unknown=False) == {"inflight": 2, "data": 2}
    # The stalled worker's results land nowhere: the rows are no longer its.
    a.record([Decision(JournalState.ACCEPTED, 250, "ok", 1, 0.0, 0.0, "", i) for i in sent.ids])
    with pytest.raises(LeaseLostError):
        await a.claim(1, now=0.0)
    counts = await b.counts()
    assert counts[JournalState.UNKNOWN] == 2 and counts[JournalState.ACCEPTED] == 0
    again = await b.claim(100, now=0.0)
    assert claimed.group in {item.group for item in again}
    assert sent.group not in {item.group for item in again}  # unknown: never sent again


async def test_rows_put_back_after_a_cancelled_mark_do_not_stay_past_data(
    two: tuple[PgLedger, PgLedger], pg_url: str
) -> None:
    """The run stopping at once cancels a "past DATA" mark still queued, and the dispatcher
    puts its rows back. That unmark must run after the mark: unmarks are coalesced, and
    joining one queued before the mark would leave the rows past DATA (reaped as unknown,
    though their final "." never went)."""
    a, _ = two
    first, second, third = await a.claim(3, now=0.0)
    await a.mark_data(first.ids)
    async with await psycopg.AsyncConnection.connect(pg_url) as blocker:
        await blocker.execute("LOCK TABLE asyncmailer_recipients IN ACCESS EXCLUSIVE MODE")
        a.unmark_data(first.ids)  # the writer takes it and waits on the lock
        await asyncio.sleep(0.3)
        a.unmark_data(second.ids)  # an unmark statement queued behind it
        marking = asyncio.ensure_future(a.mark_data(third.ids))
        await asyncio.sleep(0)  # the mark is queued behind that unmark
        marking.cancel()
        a.unmark_data(third.ids)  # as the dispatcher does when its commit is cancelled
    # the lock is gone with the blocker's transaction
    with pytest.raises(asyncio.CancelledError):
        await marking
    for _ in range(50):
        counts = await a.counts()
        if not counts[JournalState.DATA]:
            break
        await asyncio.sleep(0.1)
    assert counts[JournalState.DATA] == 0, counts
    assert counts[JournalState.INFLIGHT] == 6


def _decide(item: WorkItem, state: JournalState, at: float, delay: float) -> list[Decision]:
    return [Decision(state, 451 if delay else 250, "", 1, at, at + delay, "", i) for i in item.ids]


async def test_workers_whose_host_clocks_disagree_retry_on_the_databases_clock(
    two: tuple[PgLedger, PgLedger],
) -> None:
    """A deferred recipient is due after its delay whichever worker looks, though one host's
    clock is an hour ahead and the other's an hour behind (each decides on its own clock)."""
    a, b = two
    assert abs(a.offset) < 1 and abs(b.offset) < 1  # measured: one machine, one clock
    ahead, behind = 3600.0, -3600.0
    a.offset -= ahead  # what a host an hour ahead measures
    b.offset -= behind
    mine, theirs = (
        await a.claim(10, now=time.time() + ahead),
        await b.claim(10, now=time.time() + behind),
    )
    at_a, at_b = time.time() + ahead, time.time() + behind
    a.record(_decide(mine[0], JournalState.DEFERRED, at_a, 1.0))
    b.record(_decide(theirs[0], JournalState.DEFERRED, at_b, 60.0))
    for item in mine[1:]:
        a.record(_decide(item, JournalState.ACCEPTED, at_a, 0.0))
    for item in theirs[1:]:
        b.record(_decide(item, JournalState.ACCEPTED, at_b, 0.0))
    assert await a.claim(10, now=time.time() + ahead) == []  # neither is due yet
    await asyncio.sleep(1.5)
    (again,) = await b.claim(10, now=time.time() + behind)  # a's, one second later
    assert again.group == mine[0].group
    due = await b.next_due()  # theirs, on b's own clock
    assert due is not None and abs(due - (at_b + 60.0)) < 2.0


async def test_the_heartbeat_notices_a_lapsed_lease_and_stops_the_run(
    pg_url: str, run: int
) -> None:
    async with await PgLedger.open(
        LedgerUrl(pg_url), campaign="fencing", run=run, lease=0.6
    ) as ledger:
        stopped = asyncio.Event()
        ledger.on_failure(lambda _: stopped.set())
        _expire(pg_url, ledger.lease_id)
        await asyncio.wait_for(stopped.wait(), 5)
        assert isinstance(ledger.failure, LeaseLostError)


async def test_a_fenced_out_worker_never_writes_the_final_dot(
    make_campaign: CampaignFactory, pg_url: str, run: int
) -> None:
    # The server greets late: the worker has claimed, and its lease lapses before it
    # commits "past DATA". The commit fails, so the message is never completed.
    server = await FaultyServer(Faults(greeting_delay=0.5)).start()
    try:
        path = plain_list_campaign(
            make_campaign, server.port, ["a@example.com", "b@example.com"], concurrency=1
        )
        campaign = await load_campaign(path, env={})
        async with await PgLedger.open(LedgerUrl(pg_url), campaign="fencing", run=run) as ledger:

            async def lapse() -> None:
                while not server.connections:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(_expire, pg_url, ledger.lease_id)

            lapsing = asyncio.create_task(lapse())
            with pytest.raises(LeaseLostError):
                await run_campaign(campaign, ledger=ledger, options=RunOptions())
            await lapsing
        assert server.mails == 1  # the transaction began...
        assert server.messages == []  # ...and its message was never completed
    finally:
        await server.stop()


async def test_the_schema_is_versioned_and_a_newer_one_refused(pg_url: str) -> None:
    url = LedgerUrl(pg_url)
    conn = await connect(url)
    try:
        await migrate(conn, url)
        await migrate(conn, url)  # idempotent
        cursor = await conn.execute("SELECT version FROM asyncmailer_schema")
        assert await cursor.fetchone() == (SCHEMA_VERSION,)
        await conn.execute("UPDATE asyncmailer_schema SET version = version + 1")
        with pytest.raises(JournalError, match="schema version") as caught:
            await migrate(conn, url)
    finally:
        await conn.close()
    assert PASSWORD not in str(caught.value)


async def test_a_refused_login_is_told_without_the_password(pg_url: str) -> None:
    wrong = pg_url.replace(PASSWORD, "not-the-" + PASSWORD)
    with pytest.raises(JournalError) as caught:
        await connect(LedgerUrl(wrong))
    text = str(caught.value)
    assert "password authentication failed" in text
    assert PASSWORD not in text and "********" in text


async def test_runs_are_found_by_the_campaigns_id_not_by_a_path(
    pg_url: str, tmp_path: Path
) -> None:
    url = LedgerUrl(pg_url)
    async with PgRuns(url, "same") as here, PgRuns(url, "same") as there:
        first = await here.begin(RunRequest(campaign="same", current={"list": "x"}))
        joined = await there.begin(RunRequest(campaign="same", current={"list": "x"}))
        assert (joined.id, there.serial(joined)) == (first.id, here.serial(first))
        with pytest.raises(Exception, match="changed since it began"):
            await there.begin(
                RunRequest(campaign="same", current={"list": "x", "subject": "edited"})
            )
        ended = await here.end(first, stopped=False)
        assert ended.finished
        with pytest.raises(Exception, match=r"(?i)nothing to send"):
            await there.begin(RunRequest(campaign="same", current={"list": "x"}))
        fresh = await there.begin(RunRequest(campaign="same", current={"list": "x"}, new_run=True))
        assert fresh.id != first.id and [r.id for r in await here.runs()][-1] == fresh.id


async def test_max_connections_are_shared_out_and_freed_with_the_lease(
    pg_url: str, run: int
) -> None:
    async with two_workers(pg_url, "fencing", run) as (a, b):
        assert await a.reserve_connections({"": (3, 4)}) == {"": 3}
        assert await b.reserve_connections({"": (3, 4)}) == {"": 1}  # what is left of the 4
        async with await PgLedger.open(LedgerUrl(pg_url), campaign="fencing", run=run) as c:
            assert await c.reserve_connections({"": (3, 4)}) == {"": 0}
            _expire(pg_url, a.lease_id)  # a died: its connections are free once it expired
            assert await c.reserve_connections({"": (3, 4)}) == {"": 3}


async def test_connections_of_several_relays_are_held_all_or_none(pg_url: str, run: int) -> None:
    # a holds all of one relay's; b, wanting both relays', must not keep the other's while
    # it waits: a waiting for those would wait for ever (two workers did so in CI).
    both = {"@one": (3, 2), "@two": (3, 2)}
    async with two_workers(pg_url, "relays", run) as (a, b):
        assert await a.reserve_connections({"@two": (3, 2)}) == {"@two": 2}
        assert await b.reserve_connections(both) == {"@one": 0, "@two": 0}
        assert await a.reserve_connections({"@one": (3, 2)}) == {"@one": 2}
        assert await b.reserve_connections({"@one": (1, 3), "@two": (1, 3)}) == {
            "@one": 1,
            "@two": 1,
        }


async def test_a_database_gone_for_too_long_stops_the_run_and_the_next_one_resumes(
    make_campaign: CampaignFactory, pg_url: str, run: int, pg_server: PgServer
) -> None:
    count = 300
    server = await FaultyServer(Faults(final_delay=0.01, final_delay_times=None)).start()
    url = LedgerUrl(pg_url)
    try:
        path = plain_list_campaign(
            make_campaign,
            server.port,
            [f"u{i}@example.com" for i in range(count)],
            group_size=1,
            concurrency=2,
        )
        campaign = await load_campaign(path, env={})
        async with await PgLedger.open(
            url, campaign="fencing", run=run, lease=3.0, outage=1.0
        ) as ledger:
            sending = asyncio.create_task(run_campaign(campaign, ledger=ledger))
            while len(server.delivered) < 50:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(pg_server.halt)
            try:
                with pytest.raises(JournalError, match="the ledger postgresql://"):
                    await asyncio.wait_for(sending, 30)  # it stops: it does not hang
            finally:
                await asyncio.to_thread(pg_server.resume)
        stopped_at = len(server.delivered)
        assert stopped_at < count
        # Back: the next run reaps what the stopped one held (its lease lapses) and sends
        # the rest; nobody twice.
        async with await PgLedger.open(url, campaign="fencing", run=run) as ledger:
            await asyncio.wait_for(run_campaign(campaign, ledger=ledger), 60)
            counts = await ledger.counts()
    finally:
        await server.stop()
    received = Counter(server.delivered)
    assert max(received.values()) == 1
    assert counts[JournalState.ACCEPTED] + counts[JournalState.UNKNOWN] == count
    assert counts[JournalState.UNKNOWN] <= 2  # at most one transaction per connection


async def test_the_load_has_a_connection_of_its_own_and_a_batch_cut_off_is_run_again(
    pg_url: str, run: int
) -> None:
    url = LedgerUrl(pg_url)
    async with await PgLedger.open(url, campaign="fencing", run=run) as ledger:
        assert await ledger.begin_load()
        await ledger.add_list([Mailbox(f"u{n}@example.com") for n in range(4)], 2)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
            # Another session holds the load's lock: the next batch waits for it...
            await other.execute("SELECT pg_advisory_lock(%s, %s)", lock_key(LOAD, run))
            batch = [Mailbox(f"u{n}@example.com") for n in range(2, 7)]  # u2, u3 known
            adding = asyncio.create_task(ledger.add_list(batch, 2))
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%pg_advisory_xact_lock%%'"
            )
            while not (rows := await (await other.execute(waiting)).fetchall()):
                await asyncio.sleep(0.02)
            # ...while the worker's own connection goes on: the first group is claimed.
            (item,) = await asyncio.wait_for(ledger.claim(10, now=0.0), 5)
            assert [m.addr for m in item.recipients] == ["u0@example.com", "u1@example.com"]
            # The load's connection is cut mid-batch: the batch runs again on a new one.
            await other.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
            await other.execute("SELECT pg_advisory_unlock(%s, %s)", lock_key(LOAD, run))
            assert await asyncio.wait_for(adding, 10) == (3, 2)
        await ledger.end_load()
        counts = await ledger.counts()
        rest = await ledger.claim(10, now=0.0)
    assert counts == {JournalState.INFLIGHT: 2, JournalState.PENDING: 5}
    assert [[m.addr for m in i.recipients] for i in rest] == [
        ["u2@example.com", "u3@example.com"],
        ["u4@example.com", "u5@example.com"],
        ["u6@example.com"],
    ]


async def test_a_load_batch_whose_commit_answer_is_lost_counts_its_rows_once(
    pg_server: PgServer, pg_url: str, run: int
) -> None:
    """The batch's commit is made but its answer never comes: the writer runs the batch
    again on a new connection, which must say what the first try added (5 new), not take
    its own rows for duplicates."""
    async with CommitCutter(pg_server.port) as proxy:
        url = LedgerUrl(proxy.url(pg_url))
        # A long lease: no heartbeat (on a connection of its own) can take the cut.
        async with await PgLedger.open(url, campaign="fencing", run=run, lease=600) as ledger:
            assert await ledger.begin_load()
            assert await ledger.add_list([Mailbox(f"u{n}@example.com") for n in range(3)], 2) == (
                3,
                0,
            )
            proxy.arm()
            batch = [Mailbox(f"u{n}@example.com") for n in range(3, 8)]
            assert await ledger.add_list(batch, 2) == (5, 0)
            assert proxy.cuts == 1  # it was cut, and run again
            assert await ledger.add_list([Mailbox("u1@example.com")], 2) == (0, 1)  # a duplicate
            await ledger.end_load()
            counts = await ledger.counts()
    assert counts == {JournalState.PENDING: 8}


async def test_a_connection_reservation_whose_commit_answer_is_lost_is_granted_once(
    pg_server: PgServer, pg_url: str, run: int
) -> None:
    """Run again after its lost answer, the reservation must not take its own slots for
    another worker's (it would grant none and wait on itself)."""
    async with CommitCutter(pg_server.port) as proxy:
        url = LedgerUrl(proxy.url(pg_url))
        async with await PgLedger.open(url, campaign="fencing", run=run, lease=600) as ledger:
            proxy.arm()
            assert await ledger.reserve_connections({"@one": (2, 3)}) == {"@one": 2}
            assert proxy.cuts == 1
            async with await PgLedger.open(LedgerUrl(pg_url), campaign="fencing", run=run) as b:
                assert await b.reserve_connections({"@one": (2, 3)}) == {"@one": 1}


async def test_quota_writes_whose_commit_answer_is_lost_count_once(
    pg_server: PgServer, pg_url: str, run: int
) -> None:
    """A reservation and a give-back, each run again after its lost answer: counted twice,
    the give-back would let the campaign past its daily quota."""
    day = "2026-12-06@cut"
    async with CommitCutter(pg_server.port) as proxy:
        url = LedgerUrl(proxy.url(pg_url))
        async with await PgLedger.open(url, campaign="fencing", run=run, lease=600) as ledger:
            proxy.arm()
            assert await ledger.reserve_quota(day, 10, 100) == 10
            assert (proxy.cuts, await ledger.sent_on(day)) == (1, 10)
            proxy.arm()
            ledger.count_sent(day, -4)
            assert await ledger.sent_on(day) == 6  # read after the write: the same writer
            assert proxy.cuts == 2
            assert await ledger.reserve_quota(day, 10, 100) == 10  # not mistaken for a repeat
            assert await ledger.sent_on(day) == 16


async def test_a_run_deleted_takes_its_groups_and_recipients_along(
    two: tuple[PgLedger, PgLedger], pg_url: str, run: int
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
        await db.execute("DELETE FROM asyncmailer_runs WHERE serial = %s", (run,))
        for table in ("asyncmailer_groups", "asyncmailer_recipients"):
            cursor = await db.execute(f"SELECT count(*) FROM {table} WHERE run = %s", (run,))
            assert await cursor.fetchone() == (0,)


def _rows_planned(url: str) -> float:
    """How many recipient rows the planner's statistics say there are."""
    with psycopg.connect(url) as db:
        row = db.execute(
            "SELECT reltuples FROM pg_class WHERE relname = 'asyncmailer_recipients'"
        ).fetchone()
    assert row is not None
    return float(row[0])


async def test_the_planner_knows_the_loaded_rows_before_the_first_claim(
    pg_url: str, run: int
) -> None:
    # Without statistics, the planner takes the run for a handful of rows and every claim
    # walks all of them for each group it looks at (docs/design.md: the claim's plans).
    async with await PgLedger.open(LedgerUrl(pg_url), campaign="fencing", run=run) as ledger:
        assert await ledger.begin_load()
        await ledger.add_list([Mailbox(f"u{n}@example.com") for n in range(300)], 1)
        await ledger.start_run(resend_unknown=False)  # the loader, after its first batch
        assert _rows_planned(pg_url) == 300
        await ledger.add_list([Mailbox(f"v{n}@example.com") for n in range(200)], 1)
        await ledger.end_load()
        assert _rows_planned(pg_url) == 500


async def test_a_follower_does_not_wait_on_the_load_a_live_worker_is_writing(
    pg_url: str, run: int
) -> None:
    async with two_workers(pg_url, "fencing", run) as (a, b):
        assert await a.begin_load()
        await a.add_list([Mailbox(f"u{n}@example.com") for n in range(4)], 1)
        # The loader is in the middle of its next batch: it holds the load's lock.
        with psycopg.connect(pg_url) as loading:
            loading.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(LOAD, run))
            assert not await asyncio.wait_for(b.begin_load(), 2)  # at once, not after it
            assert await b.loading()
            items = await asyncio.wait_for(b.claim(10, now=0.0), 2)  # the writer goes on
        assert [len(item.ids) for item in items] == [1, 1, 1]  # not the newest group


async def test_a_run_stopped_while_reading_the_list_reads_the_rest_when_it_goes_on(
    make_campaign: CampaignFactory, pg_url: str, run: int
) -> None:
    """A reading cut short (Ctrl-C, the quota) is no finished load: the next start of the run
    reads the list again, so its rest is sent (it was marked loaded, and never read)."""
    rows = [f"u{i}@example.com" for i in range(5000)]
    rows.insert(1500, "not an address")  # line 1,501: in the second batch
    server = await FaultyServer(Faults()).start()
    url = LedgerUrl(pg_url)
    options = RunOptions(first_batch=1000, load_batch=1000)

    try:
        path = plain_list_campaign(make_campaign, server.port, rows, group_size=10)
        campaign = await load_campaign(path, env={})
        async with await PgLedger.open(url, campaign="fencing", run=run) as ledger:
            first = await asyncio.wait_for(
                run_campaign(
                    campaign,
                    observer=StopOnFirstAnswer(options.stop),
                    options=options,
                    ledger=ledger,
                ),
                60,
            )
        assert first.list_read_to == 2001
        async with await PgLedger.open(url, campaign="fencing", run=run) as ledger:
            second = await asyncio.wait_for(
                run_campaign(
                    campaign, options=RunOptions(first_batch=1000, load_batch=1000), ledger=ledger
                ),
                60,
            )
            counts = await ledger.counts()
    finally:
        await server.stop()
    assert second.list_read_to is None
    assert counts[JournalState.ACCEPTED] == 5000
    received = Counter(server.delivered)
    assert len(received) == 5000 and max(received.values()) == 1  # nothing lost, none twice


class _LateToReserve(PgLedger):
    """A worker that asks for its connections only once `go` is set: it stands in for a loader
    a little slower than the others (its first batch, ANALYZE)."""

    go: asyncio.Event

    async def reserve_connections(self, wants: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        await self.go.wait()
        return await super().reserve_connections(wants)


async def test_the_loader_reads_on_while_the_other_workers_hold_every_connection(
    make_campaign: CampaignFactory, pg_url: str, run: int
) -> None:
    """The worker reading the list waits for a connection slot while another worker holds
    them all and has sent what was read so far: the loader must go on reading meanwhile, or
    each waits for the other for ever (the sender for rows, the loader for a slot)."""
    server = await FaultyServer(Faults()).start()
    url = LedgerUrl(pg_url)
    try:
        path = plain_list_campaign(
            make_campaign,
            server.port,
            [f"u{i}@example.com" for i in range(40)],
            group_size=1,
            concurrency=2,
            max_connections=2,
        )
        campaign = await load_campaign(path, env={})
        async with (
            await _LateToReserve.open(url, campaign="fencing", run=run) as loader,
            await PgLedger.open(url, campaign="fencing", run=run) as sender,
        ):
            assert isinstance(loader, _LateToReserve)
            loader.go = asyncio.Event()
            loading = asyncio.create_task(
                run_campaign(
                    campaign, options=RunOptions(first_batch=10, load_batch=10), ledger=loader
                )
            )
            while not await sender.loading():  # the first worker has begun the load
                await asyncio.sleep(0.01)
            sending = asyncio.create_task(
                run_campaign(
                    campaign, options=RunOptions(first_batch=10, load_batch=10), ledger=sender
                )
            )
            while not server.delivered:  # the second holds both connections, and sends
                await asyncio.sleep(0.01)
            loader.go.set()
            await asyncio.wait_for(asyncio.gather(loading, sending), 30)
            counts = await sender.counts()
    finally:
        await server.stop()
    assert counts[JournalState.ACCEPTED] == 40
    assert sorted(server.delivered) == sorted(f"u{i}@example.com" for i in range(40))
