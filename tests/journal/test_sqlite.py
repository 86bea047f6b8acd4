"""The journal: what is the SQLite ledger's own (a list read again by each run, its lock,
its file, its bulk statements). What every ledger must do is in tests/test_ledger.py, run on
both ledgers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.errors import JournalError
from asyncmailer.journal import Journal, JournalReader
from asyncmailer.journal.reader import NOT_YET
from asyncmailer.journal.schema import decision_runs
from asyncmailer.ledger import Decision, JournalState
from asyncmailer.results import RecipientResult, Status

from ..conftest import load_and_accept


def boxes(*numbers: int, host: str = "example.com") -> list[Mailbox]:
    return [Mailbox(f"user{n}@{host}") for n in numbers]


async def groups(journal: Journal) -> list[list[str]]:
    items = await journal.claim(1000, now=0.0)
    return [[m.addr for m in item.recipients] for item in items]


async def test_a_second_open_of_the_same_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with await Journal.open(path):
        with pytest.raises(JournalError, match="another run of this campaign"):
            await Journal.open(path)


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
async def test_sync_setting_reaches_sqlite(tmp_path: Path, sync: str, level: int) -> None:
    async with await Journal.open(tmp_path / "j.sqlite", sync=sync) as journal:
        pragma = await journal._call(lambda db: db.execute("PRAGMA synchronous").fetchone()[0])
        assert pragma == level  # SQLite: 1 NORMAL, 2 FULL


async def test_every_state_reads_back_as_the_report_shows_it(tmp_path: Path) -> None:
    # The final read maps states to statuses in SQL (a million rows at the end of a long
    # list): the same results, state by state, as one made per row in Python.
    def expected(addr: str, state: str, code: int, message: str, tried: int) -> RecipientResult:
        if state in Status.__members__.values():
            return RecipientResult(addr, Status(state), code, message, tried)
        if state == JournalState.DATA:
            return RecipientResult(addr, Status.UNKNOWN, None, message, tried)
        if not tried:  # pending or in flight, never tried: not attempted
            return RecipientResult(addr, Status.NOT_ATTEMPTED, None, NOT_YET, tried)
        # Given back after a try (a sender's refusal, a 452): deferred, with what it was told.
        return RecipientResult(addr, Status.DEFERRED, code, message, tried)

    rows = [
        (f"u{n}@example.com", state, 250 + n, f"text {n}", tried)
        for n, (state, tried) in enumerate(
            (state, tried) for state in JournalState for tried in (0, 2)
        )
    ]
    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        await journal.begin_load()
        await journal.add_list([Mailbox(row[0]) for row in rows], 100)

        def settle(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE recipients SET state = ?, code = ?, message = ?, attempts = ? "
                "WHERE addr = ?",
                [(state, code, message, tried, addr) for addr, state, code, message, tried in rows],
            )

        await journal._call(settle)
        page = await journal.results(0, limit=5)
        assert len(page) == 5 and page.last_id == 5
        page = await journal.results(0)
    assert list(page) == [expected(*row) for row in rows]
    assert page[1:3] == [expected(*row) for row in rows[1:3]]
    assert page[-1] == expected(*rows[-1])


async def test_bare_addresses_and_full_rows_load_alike(tmp_path: Path) -> None:
    # A batch of bare ASCII addresses goes in as a plain array (key lower-cased by SQLite);
    # one with a display name, fields or a non-ASCII address as full rows. Groups fill
    # across batches of either kind the same way, and the rows are the same.
    def rows(db: sqlite3.Connection) -> list[tuple[object, ...]]:
        return db.execute(
            "SELECT id, key, addr, name, grp, loaded, fields FROM recipients"
        ).fetchall()

    loads = {
        "plain": [boxes(1, 2, 3), [Mailbox("User4@Example.COM"), *boxes(5)], boxes(6, 7, 8, 9)],
        "full": [
            [*boxes(1, 2), Mailbox("user3@example.com", "")],
            [Mailbox("User4@Example.COM", "x"), *boxes(5)],
            [Mailbox("ÜNÏ@example.com"), *boxes(7, 8, 9)],
        ],
    }
    found = {}
    for kind, batches in loads.items():
        async with await Journal.open(tmp_path / f"{kind}.sqlite") as journal:
            await journal.begin_load()
            for batch in batches:
                if kind == "full" and batch is batches[0]:
                    await journal.add_list(batch, 4, [{"n": "1"}, {"n": "2"}, {"n": "3"}])
                else:
                    await journal.add_list(batch, 4)
            found[kind] = await journal._call(rows)
    plain, full = found["plain"], found["full"]
    assert [r[4] for r in plain] == [r[4] for r in full] == [1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert [r[:3] for r in plain[:5]] == [r[:3] for r in full[:5]]
    assert plain[3][1:3] == ("user4@example.com", "User4@Example.COM")
    assert full[5][1:3] == ("ünï@example.com", "ÜNÏ@example.com")  # str.lower(), not SQLite's
    assert [r[3] for r in full[:5]] == ["", "", "", "x", ""] and plain[0][6] is None
    assert full[0][6] == '{"n": "1"}' and {r[5] for r in plain + full} == {1}


async def test_results_go_as_runs_and_each_row_gets_its_own(tmp_path: Path) -> None:
    # A transaction's decisions are mostly alike but for the id: they are written as runs
    # (the fields once, then the ids), and every row still ends up with its own decision.
    def decision(state: JournalState, code: int, tried: int, next_try: float, i: int) -> Decision:
        return Decision(state, code, f"text {code}", tried, 100.0 + code, next_try, "", i)

    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        await journal.begin_load()
        await journal.add_list(boxes(*range(8)), 8)
        await journal.end_load()
        (item,) = await journal.claim(1, now=0.0)
        a, b, c, d, e, f, g, h = item.ids
        decided = [
            decision(JournalState.ACCEPTED, 250, 1, 0.0, a),
            decision(JournalState.ACCEPTED, 250, 1, 0.0, b),
            decision(JournalState.REFUSED, 550, 1, 0.0, c),
            decision(JournalState.ACCEPTED, 250, 1, 0.0, d),
            decision(JournalState.DEFERRED, 451, 1, 500.0, e),
            decision(JournalState.DEFERRED, 451, 1, 500.0, f),
            decision(JournalState.PENDING, 452, 0, 0.0, g),
        ]
        assert [len(run[-1]) for run in decision_runs(decided)] == [2, 1, 1, 2, 1]
        journal.record(decided[:3])
        journal.record(decided[3:6])  # joins the same statement if the writer is not there yet
        journal.record(decided[6:])  # one recipient's decision goes as it is: a run of one

        def rows(db: sqlite3.Connection) -> list[tuple[object, ...]]:
            return db.execute(
                "SELECT id, state, code, message, attempts, run_attempts, first_try, next_try "
                "FROM recipients ORDER BY id"
            ).fetchall()

        found = await journal._call(rows)
    expected = [
        (x.id, x.state, x.code, x.message, x.tried, x.tried, x.at, x.next_try) for x in decided
    ]
    assert found == [*expected, (h, "inflight", None, "", 0, 0, None, 0.0)]


async def test_a_claim_gives_a_groups_recipients_in_the_lists_order(tmp_path: Path) -> None:
    # Claims read each group in one row, through the index of what is due (by group, then
    # by when): retried recipients due in another order still go in the list's order.
    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        await journal.begin_load()
        await journal.add_list([*boxes(1, 2, 3, 4), Mailbox("five@example.com", "Five")], 5)
        await journal.end_load()
        (item,) = await journal.claim(10, now=0.0)
        assert item.attempts == 0 and item.fields == ({},) * 5
        due = {item.ids[0]: 5.0, item.ids[1]: 3.0, item.ids[2]: 4.0, item.ids[4]: 3.5}
        journal.record(
            [
                Decision(JournalState.DEFERRED, 451, "later", 1, 1.0, due[i], "", i)
                if i in due
                else Decision(JournalState.ACCEPTED, 250, "ok", 1, 1.0, 0.0, "", i)
                for i in item.ids
            ]
        )
        (again,) = await journal.claim(10, now=10.0)
    assert again.ids == tuple(i for i in item.ids if i in due)
    assert [m.addr for m in again.recipients] == [
        "user1@example.com",
        "user2@example.com",
        "user3@example.com",
        "five@example.com",
    ]
    assert again.recipients[-1].name == "Five" and again.attempts == 1
    assert again.message_id == item.message_id and again.headers is False


async def test_an_empty_or_foreign_journal_is_refused_not_taken_as_new(tmp_path: Path) -> None:
    import sqlite3

    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(JournalError, match="the journal file is empty"):
        await Journal.open(empty)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(JournalError, match="a database of something else"):
        await Journal.open(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(JournalError):
        await Journal.open(garbage)
    with pytest.raises(JournalError, match="cannot read the journal"):
        await JournalReader(garbage).counts()


async def test_the_relay_of_each_result_is_kept_and_a_later_untried_row_keeps_it(
    tmp_path: Path,
) -> None:
    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        await journal.begin_load()
        await journal.add_list(boxes(1, 2), 10)
        await journal.end_load()
        (item,) = await journal.claim(10, now=0.0)
        accepted, deferred = item.ids
        journal.record(
            [
                Decision(JournalState.ACCEPTED, 250, "ok", 1, 1.0, 0.0, "gmail", accepted),
                Decision(JournalState.DEFERRED, 451, "later", 1, 1.0, 0.0, "isp", deferred),
            ]
        )
        await journal.counts()  # stored: the next decision of the row comes after
        # Given back untried later ("": no relay answered): the last relay that did stays.
        journal.record(
            [Decision(JournalState.PENDING, None, "not sent", 0, 2.0, 0.0, "", deferred)]
        )
        page = await journal.results()
    assert [(r.recipient, r.relay) for r in page] == [
        ("user1@example.com", "gmail"),
        ("user2@example.com", "isp"),
    ]


# The recipients table as format 1 wrote it (comments and all: SQLite keeps the text).
_FORMAT_1 = """CREATE TABLE recipients_1 (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,         -- the address, lower-cased: each address once
    addr TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    grp INTEGER NOT NULL REFERENCES groups(id),
    state TEXT NOT NULL DEFAULT 'pending',
    code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    run_attempts INTEGER NOT NULL DEFAULT 0,
    first_try REAL,
    next_try REAL NOT NULL DEFAULT 0,
    loaded INTEGER NOT NULL DEFAULT 0, -- the load (run) that last read it from the list
    fields TEXT                        -- its list row as JSON, for personalised messages
)"""
_COLUMNS_1 = (
    "id, key, addr, name, grp, state, code, message, attempts, run_attempts, first_try,"
    " next_try, loaded, fields"
)


def _as_format_1(path: Path) -> None:
    """Make a journal what asyncmailer wrote before the relay column (format 1)."""
    with sqlite3.connect(path) as db:
        db.execute(_FORMAT_1)
        db.execute(f"INSERT INTO recipients_1 SELECT {_COLUMNS_1} FROM recipients")
        db.execute("DROP TABLE recipients")
        db.execute("ALTER TABLE recipients_1 RENAME TO recipients")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.close()


async def test_a_format_1_journal_is_read_as_it_is_and_migrated_by_a_run(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with await Journal.open(path) as journal:
        await load_and_accept(journal, boxes(1, 2), at=1.0)
    _as_format_1(path)
    # status and report read it read-only, as it is: no relay known.
    (page,) = [p async for p in JournalReader(path).pages()]
    assert [(r.status, r.relay) for r in page] == [(Status.ACCEPTED, "")] * 2
    # A run brings it to this format: the column added, the rows kept.
    async with await Journal.open(path) as journal:
        assert [r.status for r in await journal.results()] == [Status.ACCEPTED] * 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
        columns = [row[1] for row in db.execute("PRAGMA table_info(recipients)")]
    db.close()
    assert "relay" in columns


async def test_a_journal_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with await Journal.open(path) as journal:
        await journal.begin_load()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.close()
    with pytest.raises(JournalError, match="of format 99; this asyncmailer reads formats up to 2"):
        await Journal.open(path)


async def test_the_bad_rows_of_the_last_whole_reading_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with await Journal.open(path) as journal:
        await journal.begin_load()
        await journal.add_list(boxes(1, 2), 10)
        await journal.end_load(3)
        assert await JournalReader(path).bad_rows() == 3
        await journal.begin_load()  # the next send reads the list again, and stops early
        await journal.end_load(1, cut_short=True)
        assert await JournalReader(path).bad_rows() == 3  # what a whole reading found
        await journal.begin_load()
        await journal.end_load(0)
        assert await JournalReader(path).bad_rows() == 0
