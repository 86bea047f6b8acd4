"""The campaign journal: every recipient's state in SQLite, so a run can stop anywhere and
resume. The embedded `Ledger`.

One file per campaign in the state folder, WAL mode, ``synchronous=FULL`` (``NORMAL`` when the
campaign sets ``journal_sync: normal``), one writer thread (`writer.Writer`) with group
commit: durability without one fsync per message. The journal stores what the run decided;
it holds no send policy and no in-memory state that steers its queries (the load fence is in
its `meta` table), so the same operations can be served by a shared database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..addresses import Mailbox, Mailboxes
from ..errors import JournalError
from ..ledger import NEVER, Added, Decision, FailureLatch, JournalState, WorkItem, first_rows
from ..message import message_ids
from ..results import ResultPage
from . import reader
from .files import lock
from .schema import (
    CLAIM,
    CLAIMED,
    INSERT,
    INSERT_PLAIN,
    LOOKUP,
    MARK_DATA,
    MIGRATIONS,
    RECORD,
    SCHEMA_VERSION,
    TO_SEND,
    check_sqlite,
    decision_runs,
)
from .writer import Writer

__all__ = ["Journal"]

T = TypeVar("T")
_NO_GROUP = 1 << 62  # above every group id
_UNKNOWN_NOTE = (
    "the run stopped after the message was sent and before the server's reply: it may or may "
    "not have been delivered"
)


def _meta(db: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else default


def _set_meta(db: sqlite3.Connection, **values: int) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
        [(key.replace("_", ":", 1), str(value)) for key, value in values.items()],
    )


_OURS = {"meta", "groups", "recipients"}


def _check(db: sqlite3.Connection) -> None:
    """Refuse a database that is not a journal: its tables would be added beside another
    program's, and every recipient would look new."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and not tables <= _OURS:
        raise JournalError(
            "this file is a database of something else, not a journal; move it, or name "
            "another state_dir"
        )


def _setup(db: sqlite3.Connection) -> None:
    """On open: a new journal is stamped with the schema version (an existing one must carry
    it), and a load left open is closed: the journal is locked to this process, so whoever
    was loading has ended."""
    (groups,) = db.execute("SELECT COUNT(*) FROM groups").fetchone()
    version = _meta(db, "schema", 0)
    columns = {row[1] for row in db.execute("PRAGMA table_info(recipients)")}
    if version == 0:  # a new journal, or one from before the stamp: format 1 or this one
        version = SCHEMA_VERSION if groups == 0 or "relay" in columns else 1
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal is of format {version}; this asyncmailer reads formats up to "
            f"{SCHEMA_VERSION} (use the version that wrote it, or --restart to set it aside)"
        )
    if version < SCHEMA_VERSION or _meta(db, "schema", 0) == 0:
        _migrate(db, version)
    _set_meta(db, load_reading=0)


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a journal of an older format up to this one, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, SCHEMA_VERSION):
            db.execute(MIGRATIONS[step])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Journal:
    """The durable record of one campaign. Open with `Journal.open()`; use as a context."""

    def __init__(self, path: Path, writer: Writer, lock_fd: int) -> None:
        self.path = path
        self._writer = writer
        self._lock = lock_fd
        self.msgid_domain = "localhost"
        # Rows waiting for the writer, by statement (see _add).
        # A bulk statement's rows, its shared future, and the callers' own futures on it.
        self._pending: dict[
            str, tuple[list[Any], asyncio.Future[None], list[asyncio.Future[None]]]
        ] = {}
        self._pending_lock = threading.Lock()
        self._latch = FailureLatch(
            lambda error: JournalError(f"cannot write the journal: {error}", path=self.path)
        )

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    @classmethod
    async def open(
        cls, path: Path, *, msgid_domain: str = "localhost", sync: str = "full"
    ) -> Journal:
        """Open (creating) the journal and lock it against a second run.

        `sync` is ``full`` (each commit on disk before it is answered) or ``normal`` (commits
        survive the process dying, not a power cut; no fsync per commit).

        :raises JournalError: locked by another run, not writable, of another format, or this
            Python's SQLite is too old.
        """
        check_sqlite()
        if await asyncio.to_thread(_empty_file, path):
            raise JournalError(
                "the journal file is empty: damaged, or not a journal; a send with --new-run "
                "sets it aside and begins a new run (check first that no recipient of it was "
                "already sent)",
                path=path,
            )
        fd = await asyncio.to_thread(functools.partial(lock, path, create=True))
        writer = Writer(path, sync, setup=_setup, check=_check)
        writer.start()
        try:
            await writer.ready
        except JournalError as err:
            os.close(fd)
            raise JournalError(err.reason, path=path) from None
        except sqlite3.Error as err:
            os.close(fd)
            raise JournalError(f"cannot open the journal: {err}", path=path) from err
        journal = cls(path, writer, fd)
        journal.msgid_domain = msgid_domain
        return journal

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Write what is queued, then release the lock (also when cancelled meanwhile)."""
        self._writer.stop()
        try:
            await asyncio.shield(asyncio.to_thread(self._writer.join))
        finally:
            os.close(self._lock)

    # -- the failure latch -------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """The first failure of a queued write (`record`, `count_sent`, `unmark_data`)."""
        return self._latch.failure

    def on_failure(self, callback: Callable[[BaseException], object]) -> None:
        self._latch.on_failure(callback)

    # -- requests ----------------------------------------------------------------------------

    def _add(
        self, sql: str, rows: Iterable[Any], waiter: asyncio.Future[None] | None = None
    ) -> asyncio.Future[None]:
        """Queue rows for `sql` (a bulk statement of `schema`): rows added until the writer
        gets to it join the same statement and commit (many transactions' marks and results
        in one go). Returns the future they share; `waiter`, one caller's own future, is
        answered with it: cancelling it, unlike the shared one, touches nobody else. The
        waiters of a statement are answered by one callback of the shared future, not one
        each: a done-callback is an event loop turn of its own (asyncio.shield takes two)."""
        with self._pending_lock:
            pending = self._pending.get(sql)
            if pending is None:
                future: asyncio.Future[None] = self._writer.loop.create_future()
                waiters: list[asyncio.Future[None]] = []
                future.add_done_callback(functools.partial(_relay, waiters))
                pending = self._pending[sql] = ([], future, waiters)
                self._writer.requests.put((functools.partial(self._flush, sql), future))
            pending[0].extend(rows)
            if waiter is not None:
                pending[2].append(waiter)
            return pending[1]

    def _flush(self, sql: str, db: sqlite3.Connection) -> None:
        """In the writer thread: run every row queued for `sql`, in one statement."""
        with self._pending_lock:
            rows, _, _ = self._pending.pop(sql)
        db.execute(sql, (json.dumps(rows),))

    async def _call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.shield(self._writer.submit(function))
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal: {err}", path=self.path) from err

    # -- loading -----------------------------------------------------------------------------

    async def begin_load(self) -> bool:
        """Start reading the campaign's recipients (once per run): an address read twice in
        one load is a duplicate; one known from an earlier run is not. Until `end_load()`,
        claims take only whole groups this load made (the fence, kept in `meta`). Always True:
        the journal is this process's alone, so this process loads."""

        def begin(db: sqlite3.Connection) -> None:
            _set_meta(
                db,
                loads=_meta(db, "loads") + 1,
                load_reading=1,
                load_first=0,
                load_group=0,
                load_filled=0,
            )

        await self._call(begin)
        return True

    async def loading(self) -> bool:
        """Never read by another process: the journal is locked to this one."""
        return False

    async def end_load(self, bad_rows: int = 0, *, cut_short: bool = False) -> None:
        """The list is read: claims take every group again. `bad_rows`: how many of its
        rows were bad (`run.loader`: no row here; `status` tells them), kept unless the
        reading was `cut_short` (the run stopping; every send reads the list again)."""
        counted = {} if cut_short else {"load_bad_rows": bad_rows}
        await self._call(lambda db: _set_meta(db, load_reading=0, **counted))

    async def add_config_group(self, mailboxes: Sequence[Mailbox]) -> Added:
        """The config's to/cc/bcc as one group (once per campaign)."""

        def add(db: sqlite3.Connection) -> Added:
            group = _meta(db, "config_group")
            if not group:
                cursor = db.execute(
                    "INSERT INTO groups (message_id, headers) VALUES (?, 1)",
                    tuple(message_ids(self.msgid_domain, 1)),
                )
                assert cursor.lastrowid is not None
                group = cursor.lastrowid
                db.execute("INSERT INTO meta VALUES ('config_group', ?)", (str(group),))
                if not _meta(db, "load:first"):
                    _set_meta(db, load_first=group)
            return self._insert(db, mailboxes, lambda count: _Fill(group, count, 0, 1))

        return await self._call(add)

    async def add_list(
        self,
        mailboxes: Sequence[Mailbox],
        group_size: int,
        fields: Sequence[Mapping[str, str]] | None = None,
    ) -> Added:
        """Add list recipients not known yet, filling groups of `group_size` across calls,
        with their list rows (`fields`, for personalised messages) when given."""

        def groups(db: sqlite3.Connection, count: int) -> _Fill:
            """Where `count` new recipients go, in order: what room the open group has, then
            new groups (inserted in one statement)."""
            group, filled = _meta(db, "load:group"), _meta(db, "load:filled")
            room = min(max(group_size - filled, 0), count) if group else 0
            created = -(-(count - room) // group_size)  # for the rest, rounded up
            if not created:
                _set_meta(db, load_filled=filled + room)
                return _Fill(group, room, 0, group_size)
            (top,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM groups").fetchone()
            db.executemany(
                "INSERT INTO groups (id, message_id, headers) VALUES (?, ?, 0)",
                zip(
                    range(top + 1, top + 1 + created),
                    message_ids(self.msgid_domain, created),
                    strict=True,
                ),
            )
            _set_meta(
                db,
                load_group=top + created,
                load_filled=count - room - (created - 1) * group_size,
                load_first=_meta(db, "load:first") or top + 1,
            )
            return _Fill(group, room, top + 1, group_size)

        rows = [json.dumps(f, ensure_ascii=False) for f in fields] if fields is not None else None
        return await self._call(
            lambda db: self._insert(db, mailboxes, functools.partial(groups, db), rows)
        )

    def _insert(
        self,
        db: sqlite3.Connection,
        mailboxes: Sequence[Mailbox],
        groups: Callable[[int], _Fill],
        fields: Sequence[str] | None = None,
    ) -> Added:
        """Insert the addresses not in the journal yet; `groups(n)` places the n new ones
        (only those, so groups fill without gaps).

        Set-wise, for speed with long lists: one lookup of the batch's addresses, one insert of
        the new ones (both over a JSON array; a list of bare addresses as just those), and one
        `executemany` for those known from an earlier load."""
        load = _meta(db, "loads")
        boxes = Mailboxes.of(mailboxes)
        keys = [addr.lower() for addr in boxes.addrs]
        firsts = first_rows(keys)
        duplicates = len(keys) - len(firsts)
        unique = keys if len(firsts) == len(keys) else [keys[i] for i in firsts]
        known: dict[str, tuple[int, int]] = {
            key: (row_id, loaded)
            for key, row_id, loaded in db.execute(LOOKUP, (json.dumps(unique),))
        }
        fresh = firsts
        seen_again: list[tuple[int, str | None, int]] = []  # loaded, fields, id
        if known:
            fresh = []
            for number in firsts:
                found = known.get(keys[number])
                if found is None:
                    fresh.append(number)
                elif found[1] == load:
                    duplicates += 1
                else:
                    seen_again.append(
                        (load, fields[number] if fields is not None else None, found[0])
                    )
        place = groups(len(fresh))._asdict()
        addrs, names = boxes.addrs, boxes.names
        if fields is None and not any(names) and all(map(str.isascii, addrs)):
            # Bare addresses (most long lists): lower() is str.lower() on ASCII.
            plain = addrs if len(fresh) == len(addrs) else [addrs[i] for i in fresh]
            db.execute(INSERT_PLAIN, {**place, "load": load, "rows": json.dumps(plain)})
        else:
            rows = [  # laid out as schema.NEW_ROW
                (keys[i], addrs[i], names[i], fields[i] if fields is not None else None)
                for i in fresh
            ]
            db.execute(
                INSERT, {**place, "load": load, "rows": json.dumps(rows, ensure_ascii=False)}
            )
        # Known from an earlier load: the row as read now, so an edited list is what is sent.
        db.executemany(
            "UPDATE recipients SET loaded = ?, fields = COALESCE(?, fields) WHERE id = ?",
            seen_again,
        )
        return Added(len(fresh), duplicates)

    # -- starting a run ----------------------------------------------------------------------

    async def start_run(self, *, resend_unknown: bool) -> dict[JournalState, int]:
        """Settle what a stopped run left: claimed but never past DATA -> pending; past DATA
        without a reply -> unknown (or pending with `resend_unknown`); deferred -> due now.
        Returns how many of each were changed."""

        def start(db: sqlite3.Connection) -> dict[JournalState, int]:
            changed = {}
            changed[JournalState.INFLIGHT] = db.execute(
                "UPDATE recipients SET state = ? WHERE state = ?",
                (JournalState.PENDING, JournalState.INFLIGHT),
            ).rowcount
            changed[JournalState.DATA] = db.execute(
                "UPDATE recipients SET state = ?, code = NULL, message = ? WHERE state = ?",
                (JournalState.UNKNOWN, _UNKNOWN_NOTE, JournalState.DATA),
            ).rowcount
            if resend_unknown:
                changed[JournalState.UNKNOWN] = db.execute(
                    "UPDATE recipients SET state = ? WHERE state = ?",
                    (JournalState.PENDING, JournalState.UNKNOWN),
                ).rowcount
            # Only rows that need it: a fresh list's rows are already so (and a long list's
            # would all be rewritten for nothing).
            db.execute(
                "UPDATE recipients SET next_try = 0, run_attempts = 0 "
                f"WHERE state IN {TO_SEND} AND (next_try != 0 OR run_attempts != 0)"
            )
            return changed

        return await self._call(start)

    # -- sending -----------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[WorkItem]:
        """Take up to `limit` groups with recipients due now and mark those recipients in
        flight, committed before any of them is sent.

        While the list is still being loaded, only whole groups this load made are taken: not
        the newest (it may still grow), and none from an earlier run (its rows are re-read
        later in the list, and go with the row as read now)."""

        def claim(db: sqlite3.Connection) -> list[WorkItem]:
            # The first `limit` groups with a due recipient, in order; then every due recipient
            # up to the last of them is one of theirs. Both statements walk the partial index
            # of recipients still to send, so a claim costs what it takes, not the list's size.
            low, high = 0, _NO_GROUP
            if _meta(db, "load:reading"):
                low = _meta(db, "load:first") or _NO_GROUP
                high = _meta(db, "load:group") or _NO_GROUP
            (last,) = db.execute(
                "SELECT MAX(grp) FROM (SELECT DISTINCT grp FROM recipients"
                f" WHERE state IN {TO_SEND} AND next_try <= ?"
                " AND grp >= ? AND grp < ? ORDER BY grp LIMIT ?)",
                (now, low, high, limit),
            ).fetchone()
            if last is None:
                return []
            # Each group's due recipients in one row (JSON arrays; a group of one as its
            # columns), not a row, a tuple and a GIL round trip per recipient; then the same
            # rows, in the same transaction, go in flight.
            due = {"now": now, "low": low, "last": last}
            found = db.execute(CLAIMED, due).fetchall()
            db.execute(CLAIM, due)
            return [_work_item(*row) for row in found]

        return await self._call(claim)

    async def mark_data(self, ids: Sequence[int]) -> None:
        """The final ``.`` is about to be written for these: committed first (the one write
        that is awaited: it is the commit point)."""
        # A waiter of its own: cancelling this caller (the run stopping) must not cancel the
        # statement other transactions share.
        waiter: asyncio.Future[None] = self._writer.loop.create_future()
        _ = self._add(MARK_DATA, ids, waiter)  # the shared future: this caller waits on its own
        try:
            await waiter
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal: {err}", path=self.path) from err

    def unmark_data(self, ids: Sequence[int]) -> None:
        """The final "." was not written after all: back to claimed (resent on resume)."""

        def unmark(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE recipients SET state = ? WHERE id = ? AND state = ?",
                [(JournalState.INFLIGHT, i, JournalState.DATA) for i in ids],
            )

        self._latch.watch(self._writer.submit(unmark))

    def record(self, decisions: Sequence[Decision]) -> None:
        """Queue a transaction's decided rows (the caller need not wait for the commit:
        requests run in order, so anything asked later sees them)."""
        with self._pending_lock:
            new = RECORD not in self._pending
        # A transaction's rows as runs (schema.RECORD); one recipient's decision is its own.
        future = self._add(RECORD, decisions if len(decisions) == 1 else decision_runs(decisions))
        if new:  # one watch per shared statement, not per transaction
            self._latch.watch(future)

    async def release(self, item: WorkItem) -> None:
        """Give claimed recipients back, untried (e.g. the run is stopping)."""

        def release(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE recipients SET state = ? WHERE id = ? AND state = ?",
                [(JournalState.PENDING, i, JournalState.INFLIGHT) for i in item.ids],
            )

        await self._call(release)

    async def requeue_refused(self, codes: Sequence[str] = ()) -> int:
        """Make refused recipients pending again (only those refused with one of `codes`:
        reply codes like ``550``, or enhanced codes like ``5.7.1`` that the server's text
        begins with). Returns how many."""
        basic = [int(c) for c in codes if c.isdigit()]
        enhanced = [c for c in codes if not c.isdigit()]

        def requeue(db: sqlite3.Connection) -> int:
            sql = "UPDATE recipients SET state = ?, next_try = 0, run_attempts = 0 WHERE state = ?"
            params: list[object] = [JournalState.PENDING, JournalState.REFUSED]
            if codes:
                tests = ["code = ?"] * len(basic) + ["message = ? OR message LIKE ?"] * len(
                    enhanced
                )
                sql += " AND (" + " OR ".join(tests) + ")"
                params += basic
                for code in enhanced:
                    params += [code, code + " %"]
            return db.execute(sql, params).rowcount

        return await self._call(requeue)

    async def sent_on(self, day: str) -> int:
        """How many recipients were tried on `day` (YYYY-MM-DD), for the daily quota."""
        return await self._call(lambda db: _meta(db, f"sent:{day}"))

    def count_sent(self, day: str, count: int) -> None:
        def add(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(value AS INTEGER) + excluded.value",
                (f"sent:{day}", count),
            )

        self._latch.watch(self._writer.submit(add))

    async def next_due(self) -> float | None:
        """When the next deferred recipient is due in this run, if any is."""

        def due(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                f"SELECT MIN(next_try) FROM recipients WHERE state IN {TO_SEND} AND next_try < ?",
                (NEVER,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._call(due)

    # -- reading -----------------------------------------------------------------------------

    async def counts(self) -> Counter[JournalState]:
        return await self._call(reader.counts)

    async def results(self, after: int = 0, limit: int = 5000) -> ResultPage:
        """Every recipient's latest result, in order, a page at a time (by row id: the next
        page is after `last_id`)."""
        return await self._call(lambda db: reader.page(db, after, limit))


def _work_item(
    group: int,
    message_id: str,
    headers: int,
    count: int,
    attempts: int,
    ids: Any,
    addrs: Any,
    names: Any,
    fields: Any,
) -> WorkItem:
    """A row of schema.CLAIMED as the group's work, its recipients in the list's order."""
    if count == 1:  # one recipient per message (group_size 1, personalised): its columns
        kept = (json.loads(fields) if fields else {},)
        return WorkItem(
            group, message_id, bool(headers), (ids,), (Mailbox(addrs, names),), attempts, kept
        )
    columns = [json.loads(column) for column in (ids, addrs, names, fields)]
    if columns[0] != sorted(columns[0]):  # a retry's rows come as they are due: in list order
        order = sorted(range(count), key=columns[0].__getitem__)
        columns = [[column[i] for i in order] for column in columns]
    ids, addrs, names, fields = columns
    return WorkItem(
        group=group,
        message_id=message_id,
        headers=bool(headers),
        ids=tuple(ids),
        recipients=tuple(map(Mailbox, addrs, names)),
        attempts=attempts,
        fields=tuple({} if f is None else f for f in fields),
    )


class _Fill(NamedTuple):
    """Where a load's new rows go, in order: the first `room` to `group`, then `size` to
    each group from `next` on (the parameters of schema.GROUP_OF)."""

    group: int
    room: int
    next: int
    size: int


def _empty_file(path: Path) -> bool:
    """An existing journal file of no bytes: not one this program wrote (it writes the
    schema at once)."""
    try:
        return path.stat().st_size == 0 and not Path(f"{path}-wal").exists()
    except FileNotFoundError:
        return False


def _relay(waiters: list[asyncio.Future[None]], shared: asyncio.Future[None]) -> None:
    """Answer each caller's own future as the shared statement was answered."""
    for waiter in waiters:
        if waiter.done():  # its caller was cancelled
            continue
        if shared.cancelled():
            waiter.cancel()
        elif (error := shared.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(None)
