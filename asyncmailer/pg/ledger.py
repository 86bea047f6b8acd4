"""`PgLedger`: the `Ledger` operations on a shared PostgreSQL database, for any number of
workers on any number of hosts running one campaign's run.

Each worker holds a **lease** (a row with an expiry on the database's clock, renewed by a
heartbeat). A claim takes groups with ``FOR UPDATE SKIP LOCKED`` and stamps their rows with
the lease; the "past DATA" commit and every result are written only where a row is still
held by this lease (and the lease is alive), so a worker that lost its lease cannot send the
final "." nor overwrite what another worker did. An expired lease is reaped by any worker:
its rows in flight go back to pending, its rows past DATA become unknown.

When a deferred recipient is due again is kept on the database's clock too: each worker
measures its host clock's offset from the database's (at its lease, then at each heartbeat)
and moves its times by it, so workers on hosts whose clocks disagree retry on one schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg

from ..addresses import Mailbox, Mailboxes
from ..errors import JournalError, LeaseLostError
from ..journal.reader import NOT_YET, result_columns
from ..ledger import (
    LEASE,
    NEVER,
    Added,
    Decision,
    FailureLatch,
    JournalState,
    WorkItem,
    first_rows,
)
from ..ledger_url import LedgerUrl
from ..message import message_ids
from ..results import ResultPage
from .database import Connection, Writer, connect, translate
from .schema import CONNECTIONS, LOAD, TO_SEND, lock_key

__all__ = ["LEASE", "LeaseLostError", "PgLedger"]

OUTAGE = 60.0  # seconds a worker waits for the database to come back before it stops
# Seconds between looks while other workers hold work that may come back: soon at first
# (their last transactions end within a round trip or two: the run's end), then less often,
# doubling up to POLL (a dead worker's rows come back only when its lease lapses).
POLL_FIRST = 0.05
POLL = 0.5
_NO_GROUP = 1 << 62
UNKNOWN_NOTE = (
    "the worker holding it stopped after the message was sent and before the server's reply: "
    "it may or may not have been delivered"
)
_R = "asyncmailer_recipients"
_CLOCK = "extract(epoch FROM clock_timestamp())"  # the database's clock, as time.time()


# The rows as the report shows them, read as `journal.reader` reads SQLite's.
RESULTS = (
    f"SELECT {result_columns('%(not_yet)s')}, relay"
    f" FROM {_R} WHERE run = %(run)s AND id > %(after)s ORDER BY id LIMIT %(limit)s"
)
_ALIVE = "EXISTS (SELECT 1 FROM asyncmailer_leases WHERE id = %(me)s AND expires > now())"
# Reap every expired lease of the run: what it held in flight goes back to pending, what it
# held past DATA becomes unknown. Any worker may do it; a second one finds nothing left.
_REAP = (
    "WITH dead AS (DELETE FROM asyncmailer_leases WHERE run = %(run)s AND expires <= now()"
    " RETURNING id)"
    f" UPDATE {_R} SET state = CASE WHEN state = '{JournalState.INFLIGHT}'"
    f" THEN '{JournalState.PENDING}' ELSE '{JournalState.UNKNOWN}' END,"
    f" code = CASE WHEN state = '{JournalState.DATA}' THEN NULL ELSE code END,"
    f" message = CASE WHEN state = '{JournalState.DATA}' THEN %(note)s ELSE message END,"
    " claim = NULL, batch = NULL"
    f" WHERE claim IN (SELECT id FROM dead) AND state IN ('{JournalState.INFLIGHT}',"
    f" '{JournalState.DATA}') RETURNING state"
)
_MARK = (
    f"UPDATE {_R} SET state = '{JournalState.DATA}' WHERE id = ANY(%(ids)s::bigint[])"
    f" AND claim = %(me)s AND state IN ('{JournalState.INFLIGHT}', '{JournalState.DATA}')"
    f" AND {_ALIVE} RETURNING id"
)
_RECORD = (
    f"UPDATE {_R} AS r SET state = d.state, code = d.code, message = d.message,"
    " attempts = r.attempts + d.tried, run_attempts = r.run_attempts + d.tried,"
    " first_try = COALESCE(r.first_try, d.at), next_try = d.next_try, claim = NULL, batch = NULL,"
    " relay = CASE WHEN d.relay = '' THEN r.relay ELSE d.relay END"
    " FROM unnest(%(state)s::text[], %(code)s::int[], %(message)s::text[], %(tried)s::int[],"
    " %(at)s::float8[], %(next_try)s::float8[], %(relay)s::text[], %(id)s::bigint[])"
    " AS d(state, code, message, tried, at, next_try, relay, id)"
    f" WHERE r.id = d.id AND r.claim = %(me)s AND r.state IN ('{JournalState.INFLIGHT}',"
    f" '{JournalState.DATA}')"
)
# Loading: a batch of the list is copied into the transaction's staging table (emptied at
# each commit), matched against the run's rows there, and its new rows inserted from it.
_STAGE_TABLE = "asyncmailer_stage"
_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_TABLE}"
    " (o INTEGER NOT NULL, key TEXT NOT NULL, addr TEXT NOT NULL, name TEXT NOT NULL,"
    " fields TEXT) ON COMMIT DELETE ROWS"
)
_STAGE_COPY = f"COPY {_STAGE_TABLE} (o, key, addr, name, fields) FROM STDIN"
# The batch's rows known in the run already, by their number in the batch. The LIMIT keeps
# it one lookup by the unique key per row (a planner that took the staging table for large,
# or the run for small, would otherwise hash all of the run's rows for each batch).
_KNOWN = (
    f"SELECT s.o, r.id, r.loaded FROM {_STAGE_TABLE} AS s CROSS JOIN LATERAL"
    f" (SELECT id, loaded FROM {_R} WHERE run = %s AND key = s.key LIMIT 1) AS r"
)
# The new rows, in list order: the first `room` to the open group, the rest to new groups.
_INSERT = (
    f"INSERT INTO {_R} (run, key, addr, name, grp, loaded, fields)"
    " SELECT %(run)s, key, addr, name,"
    " CASE WHEN n - 1 < %(room)s THEN %(group)s"
    " ELSE %(next)s + (n - 1 - %(room)s) / %(size)s END,"
    " %(load)s, fields::jsonb"
    f" FROM (SELECT *, row_number() OVER (ORDER BY o) AS n FROM {_STAGE_TABLE}) AS s"
    " ORDER BY o"
)
assert Decision._fields == (
    "state",
    "code",
    "message",
    "tried",
    "at",
    "next_try",
    "relay",
    "id",
)


def _offset(before: float, database: float) -> float:
    """The database's clock minus this host's, from a reading of it taken between `before`
    and now (its error is at most half the round trip)."""
    return database - (before + time.time()) / 2


def _owner() -> str:
    return f"{socket.gethostname()} process {os.getpid()}"


class PgLedger:
    """One worker's view of one run in the shared ledger. Open with `PgLedger.open()`; use
    as an async context (closing ends the lease)."""

    def __init__(
        self,
        writer: Writer,
        *,
        url: LedgerUrl,
        campaign: str,
        run: int,
        lease_id: int,
        lease: float,
        msgid_domain: str,
        offset: float = 0.0,
    ) -> None:
        self._writer = writer
        # The database's clock minus this host's: next_try is stored on the database's.
        self.offset = offset
        # The list's load has a connection of its own (opened by `begin_load`, closed by
        # `end_load`): its long batches do not hold up the claims and results queued behind
        # them, nor they the load.
        self._loader: Writer | None = None
        self.url = url
        self.campaign = campaign
        self.run = run
        self.lease_id = lease_id
        self._poll = POLL_FIRST  # next_due's next wait while others hold rows
        self.lease = lease
        self.msgid_domain = msgid_domain
        self._pending: dict[str, tuple[list[Any], asyncio.Future[Any]]] = {}
        self._marking: asyncio.Future[Any] | None = None  # the last "past DATA" statement
        self._latch = FailureLatch(
            lambda error: (
                error
                if isinstance(error, JournalError)
                else translate(self.url, error, "cannot write")
            )
        )
        self._tokens = itertools.count(1)
        self._heartbeat: asyncio.Task[None] | None = None
        self.reaped: Counter[JournalState] = Counter()  # what this worker reaped of others'

    def __repr__(self) -> str:
        return f"<PgLedger {self.url.masked} run={self.run} lease={self.lease_id}>"

    @classmethod
    async def open(
        cls,
        url: LedgerUrl,
        *,
        campaign: str,
        run: int,
        msgid_domain: str = "localhost",
        lease: float = LEASE,
        outage: float = OUTAGE,
    ) -> PgLedger:
        """Connect and take a lease on `run` (a serial of `asyncmailer_runs`).

        :raises JournalError: the database cannot be reached or used.
        """
        writer = Writer(url, outage=outage)
        await writer.start()

        async def take(conn: Connection) -> tuple[int, float]:
            before = time.time()
            cursor = await conn.execute(
                "INSERT INTO asyncmailer_leases (run, owner, expires)"
                f" VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING id, {_CLOCK}",
                (run, _owner(), lease),
            )
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0]), _offset(before, float(row[1]))

        try:
            lease_id, offset = await writer.submit(take)
        except Exception as err:
            await writer.stop()
            raise translate(url, err, "cannot use") from None
        ledger = cls(
            writer,
            url=url,
            campaign=campaign,
            run=run,
            lease_id=lease_id,
            lease=lease,
            msgid_domain=msgid_domain,
            offset=offset,
        )
        ledger._heartbeat = asyncio.create_task(ledger._beat())
        return ledger

    async def __aenter__(self) -> PgLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Write what is queued, end the lease (what it still holds is reaped by whoever
        looks next), and close the connection."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        params = {"me": self.lease_id}

        async def end(conn: Connection) -> None:
            await conn.execute(
                "UPDATE asyncmailer_leases SET expires = now() WHERE id = %(me)s", params
            )

        async def forget(conn: Connection) -> None:
            await conn.execute("DELETE FROM asyncmailer_quota_writes WHERE lease = %(me)s", params)

        if self._latch.failure is not None:  # the database may be gone: do not wait long for it
            self._writer.outage = min(self._writer.outage, 2.0)
        await self._stop_loader()
        end_future = self._writer.submit(end)
        # Solo: its own transaction, so that nothing it could fail on takes the last marks down.
        forget_future = self._writer.submit(forget, solo=True)
        await self._writer.stop()
        for future in (end_future, forget_future):
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the database may be gone by now

    # -- the failure latch -------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        return self._latch.failure

    def on_failure(self, callback: Callable[[BaseException], object]) -> None:
        self._latch.on_failure(callback)

    # -- requests ----------------------------------------------------------------------------

    async def _call(
        self,
        work: Callable[[Connection], Awaitable[Any]],
        *,
        solo: bool = False,
        writer: Writer | None = None,
    ) -> Any:
        try:
            return await asyncio.shield((writer or self._writer).submit(work, solo=solo))
        except JournalError:
            raise
        except Exception as err:
            if type(err).__module__.startswith("psycopg"):
                raise translate(self.url, err, "cannot write") from None
            raise

    def _add(
        self, kind: str, rows: Sequence[Any], run: Callable[[Connection, list[Any]], Awaitable[Any]]
    ) -> asyncio.Future[Any]:
        """Queue rows for one bulk statement: rows added until the writer gets to it join
        the same statement. A repeat after a reconnect runs the same rows again."""
        pending = self._pending.get(kind)
        if pending is None:
            taken: list[list[Any]] = []

            async def flush(conn: Connection) -> Any:
                if not taken:
                    taken.append(self._pending.pop(kind)[0])
                return await run(conn, taken[0])

            future = self._writer.submit(flush)
            pending = self._pending[kind] = ([], future)
        pending[0].extend(rows)
        return pending[1]

    async def _meta(self, conn: Connection) -> dict[str, int]:
        cursor = await conn.execute(
            "SELECT key, value FROM asyncmailer_meta WHERE run = %s", (self.run,)
        )
        return {key: int(value) for key, value in await cursor.fetchall()}

    async def _set_meta(self, conn: Connection, **values: int) -> None:
        await conn.execute(
            "INSERT INTO asyncmailer_meta (run, key, value)"
            " SELECT %s, k, v FROM unnest(%s::text[], %s::bigint[]) AS t(k, v)"
            " ON CONFLICT (run, key) DO UPDATE SET value = excluded.value",
            (self.run, [k.replace("_", ":", 1) for k in values], list(values.values())),
        )

    async def _reap(self, conn: Connection) -> Counter[JournalState]:
        cursor = await conn.execute(_REAP, {"run": self.run, "note": UNKNOWN_NOTE})
        reaped = Counter(JournalState(state) for (state,) in await cursor.fetchall())
        self.reaped += reaped
        return reaped

    # -- the lease ---------------------------------------------------------------------------

    async def _beat(self) -> None:
        """Renew the lease every third of it, and reap the expired leases of others, on a
        connection of its own (a backed-up writer must not let the lease lapse). A lease
        found lapsed, or a database out of reach for a whole lease, is latched (the run
        stops)."""
        params = {"me": self.lease_id, "secs": self.lease}
        loop = asyncio.get_running_loop()
        conn: Connection | None = None

        async def renew(conn: Connection) -> None:
            async with conn.transaction():
                before = time.time()
                cursor = await conn.execute(
                    "UPDATE asyncmailer_leases"
                    " SET expires = now() + make_interval(secs => %(secs)s)"
                    f" WHERE id = %(me)s AND expires > now() RETURNING {_CLOCK}",
                    params,
                )
                row = await cursor.fetchone()
                if row is None:
                    raise self._lost("at its heartbeat")
                self.offset = _offset(before, float(row[0]))
                await self._reap(conn)

        try:
            while True:
                await asyncio.sleep(self.lease / 3)
                deadline = loop.time() + self.lease
                while True:
                    try:
                        if conn is None or conn.broken or conn.closed:
                            conn = await connect(self.url)
                        await renew(conn)
                        break
                    except LeaseLostError as err:
                        self._latch.fail(err)
                        return
                    except (JournalError, psycopg.Error) as err:
                        if loop.time() > deadline:
                            self._latch.fail(err)
                            return
                        await asyncio.sleep(min(0.5, self.lease / 6))
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _lost(self, where: str) -> LeaseLostError:
        return LeaseLostError(
            f"this worker's lease on the ledger {self.url.masked} lapsed (the database was "
            f"out of reach, or the worker stalled, for over {self.lease:g} s; found {where}): "
            "what it held goes to the other workers; run it again to go on"
        )

    # -- loading -----------------------------------------------------------------------------

    async def begin_load(self) -> bool:
        """Take the load of the run's list, unless it is done or another live worker has
        it (then False). A load whose worker's lease lapsed is taken over. While another
        worker holds the load's lock (it is writing a batch of the list), False at once: the
        caller looks again later, and meanwhile this worker's writer goes on with its marks
        and results instead of queueing them behind the lock."""

        async def begin(conn: Connection) -> bool:
            if (await self._meta(conn)).get("load:done"):
                return False  # loaded: nothing to wait for
            cursor = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s, %s)", lock_key(LOAD, self.run)
            )
            row = await cursor.fetchone()
            if row is None or not row[0]:
                return False
            meta = await self._meta(conn)
            if meta.get("load:done"):
                return False
            owner = meta.get("load:owner", 0)
            if owner and owner != self.lease_id:
                cursor = await conn.execute(
                    "SELECT 1 FROM asyncmailer_leases WHERE id = %s AND expires > now()",
                    (owner,),
                )
                if await cursor.fetchone() is not None:
                    return False
            await self._set_meta(
                conn,
                loads=meta.get("loads", 0) + 1,
                load_reading=1,
                load_first=0,
                load_group=0,
                load_filled=0,
                load_owner=self.lease_id,
            )
            return True

        if not await self._call(begin, solo=True):
            return False
        if self._loader is None:
            loader = Writer(self.url, outage=self._writer.outage)
            await loader.start()
            self._loader = loader
        return True

    async def _load(self, work: Callable[[Connection], Awaitable[Any]]) -> Any:
        """Run a step of the load on its own connection (on the worker's, before
        `begin_load` and after `end_load`)."""
        return await self._call(work, solo=True, writer=self._loader)

    async def _stop_loader(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.outage = min(loader.outage, self._writer.outage)
            await loader.stop()

    async def loading(self) -> bool:
        """The list is not all in the ledger yet."""

        async def read(conn: Connection) -> bool:
            return not (await self._meta(conn)).get("load:done")

        return bool(await self._call(read))

    async def end_load(self, bad_rows: int = 0, *, cut_short: bool = False) -> None:
        """The load ends: the whole list read (`bad_rows` of it bad), or a reading
        `cut_short` (the run stopping), which leaves the list to the next worker or start of
        the run to read again (its rows already here stay as they are)."""
        done = {"load_done": 0} if cut_short else {"load_done": 1, "load_bad_rows": bad_rows}

        async def end(conn: Connection) -> None:
            await self._set_meta(conn, load_reading=0, load_owner=0, **done)
            await _analyze(conn)

        await self._load(end)
        await self._stop_loader()

    async def _owning(self, conn: Connection) -> dict[str, int]:
        """The run's meta, once this worker is sure it still has the load."""
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(LOAD, self.run))
        meta = await self._meta(conn)
        if meta.get("load:owner") != self.lease_id:
            raise self._lost("while loading the list")
        return meta

    async def _load_batch(
        self, work: Callable[[Connection, dict[str, int]], Awaitable[Added]]
    ) -> Added:
        """Run `work`, one batch of the load (given the run's meta), and keep what it added
        with a number of this worker's for it: when a commit's answer is lost and the writer
        runs the batch again, the repeat finds it committed and returns what the first try
        added (run again, it would count every new row of the batch a duplicate)."""
        token = next(self._tokens)

        async def batch(conn: Connection) -> Added:
            meta = await self._owning(conn)
            if meta.get("load:batch") == token and meta.get("load:batcher") == self.lease_id:
                return Added(meta.get("load:new", 0), meta.get("load:duplicates", 0))
            added = await work(conn, meta)
            await self._set_meta(
                conn,
                load_batch=token,
                load_batcher=self.lease_id,
                load_new=added.new,
                load_duplicates=added.duplicates,
            )
            return added

        return await self._load(batch)  # type: ignore[no-any-return]

    async def add_config_group(self, mailboxes: Sequence[Mailbox]) -> Added:
        async def add(conn: Connection, meta: dict[str, int]) -> Added:
            group = meta.get("config:group", 0)
            if not group:
                cursor = await conn.execute(
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM asyncmailer_groups WHERE run = %s",
                    (self.run,),
                )
                row = await cursor.fetchone()
                assert row is not None
                group = int(row[0])
                await conn.execute(
                    "INSERT INTO asyncmailer_groups VALUES (%s, %s, %s, true)",
                    (self.run, group, message_ids(self.msgid_domain, 1)[0]),
                )
                values = {"config_group": group}
                if not meta.get("load:first"):
                    values["load_first"] = group
                await self._set_meta(conn, **values)
            return await self._insert(conn, meta, mailboxes, None, _fixed(group))

        return await self._load_batch(add)

    async def add_list(
        self,
        mailboxes: Sequence[Mailbox],
        group_size: int,
        fields: Sequence[Mapping[str, str]] | None = None,
    ) -> Added:
        rows = [json.dumps(f, ensure_ascii=False) for f in fields] if fields is not None else None

        async def add(conn: Connection, meta: dict[str, int]) -> Added:
            async def groups(count: int) -> tuple[int, int, int, int]:
                group, filled = meta.get("load:group", 0), meta.get("load:filled", 0)
                room = min(max(group_size - filled, 0), count) if group else 0
                created = -(-(count - room) // group_size)
                if not created:
                    await self._set_meta(conn, load_filled=filled + room)
                    return group, room, 0, group_size
                cursor = await conn.execute(
                    "SELECT COALESCE(MAX(id), 0) FROM asyncmailer_groups WHERE run = %s",
                    (self.run,),
                )
                row = await cursor.fetchone()
                assert row is not None
                top = int(row[0])
                await conn.execute(
                    "INSERT INTO asyncmailer_groups (run, id, message_id, headers)"
                    " SELECT %s, i, m, false FROM unnest(%s::bigint[], %s::text[]) AS t(i, m)",
                    (
                        self.run,
                        list(range(top + 1, top + 1 + created)),
                        message_ids(self.msgid_domain, created),
                    ),
                )
                await self._set_meta(
                    conn,
                    load_group=top + created,
                    load_filled=count - room - (created - 1) * group_size,
                    load_first=meta.get("load:first") or top + 1,
                )
                return group, room, top + 1, group_size

            return await self._insert(conn, meta, mailboxes, rows, groups)

        return await self._load_batch(add)

    async def _insert(
        self,
        conn: Connection,
        meta: dict[str, int],
        mailboxes: Sequence[Mailbox],
        fields: Sequence[str] | None,
        groups: Callable[[int], Awaitable[tuple[int, int, int, int]]],
    ) -> Added:
        """Insert the addresses not in the run yet; `groups(n)` places the n new ones.

        The batch goes in by COPY (no per-row adaptation on this side) into a staging table
        of the transaction. In the run's first load it is inserted from there as it is,
        unless the unique key finds an address of an earlier batch; otherwise what is known
        already is looked up, in SQL (rows of an earlier load are marked as read in this
        one, the rest are duplicates), and only the new ones are inserted, in list order.
        Only the load's owner inserts (`_owning` holds the load's lock), so the lookup is the
        whole test: no ON CONFLICT (the unique key stays the last word)."""
        load = meta.get("loads", 0)
        boxes = Mailboxes.of(mailboxes)
        keys = [addr.lower() for addr in boxes.addrs]
        firsts = first_rows(keys)
        duplicates = len(keys) - len(firsts)
        await conn.execute(_STAGE)
        async with conn.cursor().copy(_STAGE_COPY) as copy:
            for number in firsts:
                await copy.write_row(
                    (
                        number,
                        keys[number],
                        boxes.addrs[number],
                        boxes.names[number],
                        None if fields is None else fields[number],
                    )
                )
        if load <= 1:  # the run's first load: the batch is new but for a repeat of a row
            try:
                async with conn.transaction():  # a savepoint: undone, groups and all, if not
                    return await self._insert_new(conn, len(firsts), duplicates, load, groups)
            except psycopg.errors.UniqueViolation:
                pass  # an address of an earlier batch (or the config's) again: looked up
        cursor = await conn.execute(_KNOWN, (self.run,))
        known = await cursor.fetchall()
        again_ids: list[int] = []
        again_fields: list[str | None] = []
        for number, row_id, loaded in known:
            if loaded == load:
                duplicates += 1
            else:
                again_ids.append(row_id)
                again_fields.append(fields[number] if fields is not None else None)
        if known:
            await conn.execute(
                f"DELETE FROM {_STAGE_TABLE} WHERE o = ANY(%s::int[])", ([k[0] for k in known],)
            )
        if again_ids:  # known from an earlier load: the row as read now
            await conn.execute(
                f"UPDATE {_R} AS r SET loaded = %s, fields = COALESCE(t.f::jsonb, r.fields)"
                " FROM unnest(%s::bigint[], %s::text[]) AS t(i, f) WHERE r.id = t.i",
                (load, again_ids, again_fields),
            )
        return await self._insert_new(conn, len(firsts) - len(known), duplicates, load, groups)

    async def _insert_new(
        self,
        conn: Connection,
        fresh: int,
        duplicates: int,
        load: int,
        groups: Callable[[int], Awaitable[tuple[int, int, int, int]]],
    ) -> Added:
        """Insert the staging table's rows (`fresh` of them), placed by `groups`."""
        group, room, nxt, size = await groups(fresh)
        if fresh:
            await conn.execute(
                _INSERT,
                {
                    "run": self.run,
                    "room": room,
                    "group": group,
                    "next": nxt,
                    "size": size,
                    "load": load,
                },
            )
        return Added(fresh, duplicates)

    # -- starting a run ----------------------------------------------------------------------

    async def start_run(self, *, resend_unknown: bool) -> dict[JournalState, int]:
        """Settle what stopped workers left (their leases lapsed): in flight -> pending, past
        DATA -> unknown (or pending with `resend_unknown`). The first live worker of the run
        also makes every deferred recipient due now, with its tries in this run reset."""

        async def start(conn: Connection) -> dict[JournalState, int]:
            reaped = await self._reap(conn)
            changed = {
                JournalState.INFLIGHT: reaped[JournalState.PENDING],
                JournalState.DATA: reaped[JournalState.UNKNOWN],
            }
            if resend_unknown:
                cursor = await conn.execute(
                    f"UPDATE {_R} SET state = %s WHERE run = %s AND state = %s",
                    (JournalState.PENDING, self.run, JournalState.UNKNOWN),
                )
                changed[JournalState.UNKNOWN] = cursor.rowcount
            cursor = await conn.execute(
                "SELECT count(*) FROM asyncmailer_leases"
                " WHERE run = %s AND id != %s AND expires > now()",
                (self.run, self.lease_id),
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == 0:
                await conn.execute(
                    f"UPDATE {_R} SET next_try = 0, run_attempts = 0 WHERE run = %s"
                    f" AND state IN {TO_SEND} AND (next_try != 0 OR run_attempts != 0)",
                    (self.run,),
                )
            # This worker loads the list: its first rows are in, and the claims' plans
            # need their statistics.
            if self._loader is not None:
                await _analyze(conn)
            return changed

        return await self._call(start, solo=True)  # type: ignore[no-any-return]

    # -- sending -----------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[WorkItem]:
        """Take up to `limit` groups with recipients due now, skipping groups another worker
        is claiming this moment, and stamp their rows with this worker's lease.

        :raises LeaseLostError: the lease lapsed.
        """
        token = next(self._tokens)
        tried = False
        due = {"run": self.run, "now": self._to_database(now), "me": self.lease_id, "token": token}

        async def claim(conn: Connection) -> list[WorkItem]:
            nonlocal tried
            if tried:  # a repeat after a reconnect: the first try may have committed
                await conn.execute(
                    f"UPDATE {_R} SET state = '{JournalState.PENDING}', claim = NULL,"
                    " batch = NULL WHERE claim = %(me)s AND batch = %(token)s"
                    f" AND state = '{JournalState.INFLIGHT}'",
                    due,
                )
            tried = True
            cursor = await conn.execute(f"SELECT {_ALIVE}", due)
            row = await cursor.fetchone()
            if row is None or not row[0]:
                raise self._lost("at a claim")
            meta = await self._meta(conn)
            low, high = 0, _NO_GROUP
            if meta.get("load:reading"):
                low = meta.get("load:first") or _NO_GROUP
                high = meta.get("load:group") or _NO_GROUP
            params = {**due, "low": low, "high": high, "limit": limit}
            cursor = await conn.execute(
                f"SELECT MIN(grp) FROM {_R} WHERE run = %(run)s AND state IN {TO_SEND}"
                " AND next_try <= %(now)s AND grp >= %(low)s AND grp < %(high)s",
                params,
            )
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                return []
            cursor = await conn.execute(
                "SELECT g.id FROM asyncmailer_groups AS g"
                " WHERE g.run = %(run)s AND g.id >= %(lowest)s AND g.id < %(high)s"
                f" AND EXISTS (SELECT 1 FROM {_R} AS r WHERE r.run = g.run AND r.grp = g.id"
                f" AND r.state IN {TO_SEND} AND r.next_try <= %(now)s)"
                " ORDER BY g.id LIMIT %(limit)s FOR UPDATE OF g SKIP LOCKED",
                {**params, "lowest": row[0]},
            )
            chosen = [group for (group,) in await cursor.fetchall()]
            if not chosen:
                return []
            cursor = await conn.execute(
                f"WITH u AS (UPDATE {_R} SET state = '{JournalState.INFLIGHT}',"
                " claim = %(me)s, batch = %(token)s"
                " WHERE run = %(run)s AND grp = ANY(%(groups)s::bigint[])"
                f" AND state IN {TO_SEND} AND next_try <= %(now)s"
                " RETURNING grp, id, addr, name, fields, run_attempts)"
                " SELECT u.grp, g.message_id, g.headers, u.id, u.addr, u.name, u.fields,"
                " u.run_attempts FROM u JOIN asyncmailer_groups AS g"
                " ON g.run = %(run)s AND g.id = u.grp ORDER BY u.grp, u.id",
                {**params, "groups": chosen},
            )
            return _work_items(await cursor.fetchall())

        return await self._call(claim)  # type: ignore[no-any-return]

    async def mark_data(self, ids: Sequence[int]) -> None:
        """Commit "past DATA" for these rows, only while this lease still holds them all.

        :raises LeaseLostError: some are not this worker's any more: the final "." must
            not be written (the caller puts the others back with `unmark_data`).
        """
        params = {"me": self.lease_id}

        async def mark(conn: Connection, rows: list[int]) -> set[int]:
            cursor = await conn.execute(_MARK, {**params, "ids": rows})
            return {row_id for (row_id,) in await cursor.fetchall()}

        shared = self._marking = self._add("mark", ids, mark)
        try:
            marked = await asyncio.shield(shared)
        except Exception as err:
            if isinstance(err, JournalError):
                raise
            raise translate(self.url, err, "cannot write") from None
        if not marked.issuperset(ids):
            raise self._lost("before a final '.'")

    def unmark_data(self, ids: Sequence[int]) -> None:
        """The final "." was not written after all: back in flight. A mark of the rows may
        still be queued (its caller cancelled): the unmark is queued once the last mark has
        run, since joining an unmark queued before it would leave the rows past DATA."""
        marking = self._marking
        if marking is not None and not marking.done():
            marking.add_done_callback(lambda _: self._unmark(ids))
        else:
            self._unmark(ids)

    def _unmark(self, ids: Sequence[int]) -> None:
        params = {"me": self.lease_id}

        async def unmark(conn: Connection, rows: list[int]) -> None:
            await conn.execute(
                f"UPDATE {_R} SET state = '{JournalState.INFLIGHT}'"
                " WHERE id = ANY(%(ids)s::bigint[]) AND claim = %(me)s"
                f" AND state = '{JournalState.DATA}'",
                {**params, "ids": rows},
            )

        new = "unmark" not in self._pending
        future = self._add("unmark", ids, unmark)
        if new:
            self._latch.watch(future)

    def _to_database(self, moment: float) -> float:
        """A time of this host's clock (a decision's next try, a claim's now) on the
        database's; 0 (at once, or the beginning of time) and `NEVER` stay as they are."""
        return moment if moment == 0 or moment >= NEVER else moment + self.offset

    def record(self, decisions: Sequence[Decision]) -> None:
        """Queue a transaction's decided rows; only rows this lease still holds take them."""
        params = {"me": self.lease_id}

        async def write(conn: Connection, rows: list[Decision]) -> None:
            columns = {name: [getattr(d, name) for d in rows] for name in Decision._fields}
            columns["state"] = [str(s) for s in columns["state"]]
            columns["next_try"] = [self._to_database(t) for t in columns["next_try"]]
            await conn.execute(_RECORD, {**params, **columns})

        new = "record" not in self._pending
        future = self._add("record", decisions, write)
        if new:
            self._latch.watch(future)

    async def release(self, item: WorkItem) -> None:
        async def release(conn: Connection) -> None:
            await conn.execute(
                f"UPDATE {_R} SET state = '{JournalState.PENDING}', claim = NULL, batch = NULL"
                " WHERE id = ANY(%s::bigint[]) AND claim = %s"
                f" AND state = '{JournalState.INFLIGHT}'",
                (list(item.ids), self.lease_id),
            )

        await self._call(release)

    async def requeue_refused(self, codes: Sequence[str] = ()) -> int:
        basic = [int(c) for c in codes if c.isdigit()]
        enhanced = [c for c in codes if not c.isdigit()]

        async def requeue(conn: Connection) -> int:
            sql = (
                f"UPDATE {_R} SET state = %s, next_try = 0, run_attempts = 0"
                " WHERE run = %s AND state = %s"
            )
            params: list[object] = [JournalState.PENDING, self.run, JournalState.REFUSED]
            if codes:
                tests = ["code = %s"] * len(basic) + ["(message = %s OR message LIKE %s)"] * len(
                    enhanced
                )
                sql += " AND (" + " OR ".join(tests) + ")"
                params += basic
                for code in enhanced:
                    params += [code, code + " %"]
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

        return await self._call(requeue, solo=True)  # type: ignore[no-any-return]

    async def sent_on(self, day: str) -> int:
        async def read(conn: Connection) -> int:
            cursor = await conn.execute(
                "SELECT count FROM asyncmailer_quota WHERE campaign = %s AND day = %s",
                (self.campaign, day),
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._call(read)  # type: ignore[no-any-return]

    def count_sent(self, day: str, count: int) -> None:
        token = next(self._tokens)

        async def add(conn: Connection) -> None:
            if await self._quota_written(conn, token) is not None:
                return  # a repeat: the first try committed
            await conn.execute(
                "INSERT INTO asyncmailer_quota VALUES (%s, %s, %s) ON CONFLICT (campaign, day)"
                " DO UPDATE SET count = asyncmailer_quota.count + excluded.count",
                (self.campaign, day, count),
            )
            await self._quota_done(conn, token, count)

        self._latch.watch(self._writer.submit(add, solo=True))

    async def _quota_written(self, conn: Connection, token: int) -> int | None:
        """What the quota write `token` granted when it is committed already (the writer
        repeats a write whose commit answer was lost), else None: to be done. Only this
        worker's writer reads and writes its row: no lock is waited for."""
        cursor = await conn.execute(
            "SELECT write, granted FROM asyncmailer_quota_writes WHERE lease = %s",
            (self.lease_id,),
        )
        row = await cursor.fetchone()
        return int(row[1]) if row is not None and row[0] == token else None

    async def _quota_done(self, conn: Connection, token: int, granted: int) -> None:
        await conn.execute(
            "INSERT INTO asyncmailer_quota_writes VALUES (%s, %s, %s)"
            " ON CONFLICT (lease) DO UPDATE SET write = excluded.write, granted = excluded.granted",
            (self.lease_id, token, granted),
        )

    async def reserve_connections(self, wants: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        """`ConnectionBank`: for each key (the campaign's "", a relay's ``@name``) up to
        `count` of its `limit` connections, held by this lease (freed with it: a worker that
        died frees them once its lease expires). All or nothing in one transaction: a worker
        that kept one relay's while it waited for another's could be waiting on the worker
        that waits for the first (CI caught the two workers of a test so, for good)."""
        keys = sorted(wants)
        # One order for every worker, that of the locks themselves (two names may hash to
        # keys in the other order): they cannot deadlock.
        locks = sorted({lock_key(CONNECTIONS, self.campaign + key) for key in keys})

        async def reserve(conn: Connection) -> dict[str, int]:
            for lock in locks:
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock)
            # Expired leases' slots are free; so are this lease's own: it asks only while it
            # holds none, unless this is the writer repeating a request whose commit answer
            # was lost, which must grant the same again, not count them as another's.
            await conn.execute(
                "DELETE FROM asyncmailer_connections AS c USING asyncmailer_leases AS l"
                " WHERE c.campaign = %s AND c.key = ANY(%s) AND c.lease = l.id"
                " AND (l.expires <= now() OR l.id = %s)",
                (self.campaign, keys, self.lease_id),
            )
            cursor = await conn.execute(
                "SELECT key, count(*) FROM asyncmailer_connections"
                " WHERE campaign = %s AND key = ANY(%s) GROUP BY key",
                (self.campaign, keys),
            )
            held = dict(await cursor.fetchall())
            granted = {
                key: max(0, min(count, limit - held.get(key, 0)))
                for key, (count, limit) in wants.items()
            }
            if not all(granted.values()):
                return dict.fromkeys(wants, 0)
            for key, count in granted.items():
                await conn.execute(
                    "INSERT INTO asyncmailer_connections (campaign, key, slot, lease)"
                    " SELECT %(campaign)s, %(key)s, s, %(me)s"
                    " FROM generate_series(0, %(limit)s - 1) AS s"
                    " WHERE s NOT IN (SELECT slot FROM asyncmailer_connections"
                    " WHERE campaign = %(campaign)s AND key = %(key)s)"
                    " ORDER BY s LIMIT %(want)s",
                    {
                        "campaign": self.campaign,
                        "key": key,
                        "want": count,
                        "limit": wants[key][1],
                        "me": self.lease_id,
                    },
                )
            return granted

        return await self._call(reserve, solo=True)  # type: ignore[no-any-return]

    async def reserve_quota(self, day: str, count: int, limit: int) -> int:
        """`QuotaBank`: up to `count` of the day's quota, for the campaign (all workers)."""
        params = {"campaign": self.campaign, "day": day, "want": count, "limit": limit}
        token = next(self._tokens)

        async def reserve(conn: Connection) -> int:
            granted = await self._quota_written(conn, token)
            if granted is not None:
                return granted
            await conn.execute(
                "INSERT INTO asyncmailer_quota VALUES (%(campaign)s, %(day)s, 0)"
                " ON CONFLICT DO NOTHING",
                params,
            )
            cursor = await conn.execute(
                "WITH old AS (SELECT count FROM asyncmailer_quota"
                " WHERE campaign = %(campaign)s AND day = %(day)s FOR UPDATE)"
                " UPDATE asyncmailer_quota AS q"
                " SET count = q.count + LEAST(%(want)s, GREATEST(%(limit)s - q.count, 0))"
                " FROM old WHERE q.campaign = %(campaign)s AND q.day = %(day)s"
                " RETURNING q.count - old.count",
                params,
            )
            row = await cursor.fetchone()
            assert row is not None
            await self._quota_done(conn, token, int(row[0]))
            return int(row[0])

        return await self._call(reserve, solo=True)  # type: ignore[no-any-return]

    async def reserve_slots(self, count: int, interval: float, key: str = "") -> float:
        """`Pacer`: the campaign's (or relay's) next `count` slots, on the database's
        clock."""
        params = {"campaign": self.campaign, "key": key, "span": count * interval}

        async def reserve(conn: Connection) -> float:
            await conn.execute(
                "INSERT INTO asyncmailer_pace (campaign, key, next)"
                " VALUES (%(campaign)s, %(key)s, 0) ON CONFLICT DO NOTHING",
                params,
            )
            cursor = await conn.execute(
                "UPDATE asyncmailer_pace SET next ="
                " GREATEST(next, extract(epoch FROM clock_timestamp())) + %(span)s"
                " WHERE campaign = %(campaign)s AND key = %(key)s"
                " RETURNING next - %(span)s - extract(epoch FROM clock_timestamp())",
                params,
            )
            row = await cursor.fetchone()
            assert row is not None
            return float(row[0])

        return await self._call(reserve, solo=True)  # type: ignore[no-any-return]

    async def next_due(self) -> float | None:
        """When the next deferred recipient is due; while other workers hold rows (which
        may come back, should a worker die), soon, to look again."""

        async def due(conn: Connection) -> float | None:
            cursor = await conn.execute(
                f"SELECT MIN(next_try) FROM {_R} WHERE run = %s AND state IN {TO_SEND}"
                " AND next_try < %s",
                (self.run, NEVER),
            )
            row = await cursor.fetchone()
            found = None if row is None or row[0] is None else float(row[0]) - self.offset
            cursor = await conn.execute(
                f"SELECT 1 FROM {_R} WHERE run = %s AND claim IS NOT NULL AND claim != %s LIMIT 1",
                (self.run, self.lease_id),
            )
            if await cursor.fetchone() is None:
                self._poll = POLL_FIRST
                return found
            soon = time.time() + self._poll
            self._poll = min(self._poll * 2, POLL)
            return soon if found is None else min(found, soon)

        return await self._call(due)  # type: ignore[no-any-return]

    # -- reading -----------------------------------------------------------------------------

    async def counts(self) -> Counter[JournalState]:
        async def read(conn: Connection) -> Counter[JournalState]:
            cursor = await conn.execute(
                f"SELECT state, count(*) FROM {_R} WHERE run = %s GROUP BY state", (self.run,)
            )
            return Counter({JournalState(s): int(n) for s, n in await cursor.fetchall()})

        return await self._call(read)  # type: ignore[no-any-return]

    async def results(self, after: int = 0, limit: int = 5000) -> ResultPage:
        async def read(conn: Connection) -> ResultPage:
            cursor = await conn.execute(
                RESULTS, {"run": self.run, "after": after, "limit": limit, "not_yet": NOT_YET}
            )
            return ResultPage(await cursor.fetchall())

        return await self._call(read)  # type: ignore[no-any-return]


async def _analyze(conn: Connection) -> None:
    """Statistics of the rows just loaded. Without them the planner takes a run's rows for a
    handful (a new database's tables, or a new `run` value the statistics have not seen) and
    a claim walks the whole run for each group it looks at (docs/design.md: the claim's
    plans); autovacuum would come to it only after a minute or more. Only the columns those
    plans look at: the addresses and fields cost most to sample and tell the planner nothing
    it uses. SKIP_LOCKED: another worker or autovacuum analysing the table already is
    enough."""
    await conn.execute(
        f"ANALYZE (SKIP_LOCKED) {_R} (run, grp, state, next_try, claim),"
        " asyncmailer_groups (run, id)"
    )


def _fixed(group: int) -> Callable[[int], Awaitable[tuple[int, int, int, int]]]:
    """Every new row to `group` (the config's)."""

    async def place(count: int) -> tuple[int, int, int, int]:
        return group, count, 0, 1

    return place


def _work_items(rows: list[tuple[Any, ...]]) -> list[WorkItem]:
    """The claimed rows (in group, then id order) as one `WorkItem` per group."""
    items = []
    for group, members in itertools.groupby(rows, key=lambda row: row[0]):
        found = list(members)
        _, message_id, headers = found[0][:3]
        items.append(
            WorkItem(
                group=int(group),
                message_id=message_id,
                headers=bool(headers),
                ids=tuple(int(r[3]) for r in found),
                recipients=tuple(Mailbox(r[4], r[5]) for r in found),
                attempts=max(int(r[7]) for r in found),
                fields=tuple(r[6] or {} for r in found),
            )
        )
    return items
