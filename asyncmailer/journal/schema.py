"""The journal's SQLite schema, the bulk statements generated from one field list, and the
oldest SQLite they run on."""

from __future__ import annotations

import itertools
import operator
import sqlite3
from collections.abc import Iterable
from typing import Any

from ..errors import JournalError
from ..ledger import Decision, JournalState

__all__ = [
    "CLAIM",
    "CLAIMED",
    "INSERT",
    "INSERT_PLAIN",
    "LOOKUP",
    "MARK_DATA",
    "MIGRATIONS",
    "MIN_SQLITE",
    "RECORD",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SYNC_MODES",
    "TO_SEND",
    "check_sqlite",
    "decision_runs",
]

# RETURNING (claims) came in 3.35; UPDATE ... FROM (results) in 3.33. JSON is read with
# json_extract and json_each, not the ->> operator of 3.38: Ubuntu 22.04 ships 3.37.2.
MIN_SQLITE = (3, 35, 0)
# 2: `recipients.relay`, the relay that answered last (a journal of format 1 gets the column
# when a run opens it: `MIGRATIONS`).
SCHEMA_VERSION = 2

TO_SEND = f"('{JournalState.PENDING}', '{JournalState.DEFERRED}')"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    headers INTEGER NOT NULL          -- 1: the config's to/cc group, shown in the headers
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,         -- the address, lower-cased: each address once
    addr TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    grp INTEGER NOT NULL REFERENCES groups(id),
    state TEXT NOT NULL DEFAULT '{JournalState.PENDING}',
    code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    run_attempts INTEGER NOT NULL DEFAULT 0,
    first_try REAL,
    next_try REAL NOT NULL DEFAULT 0,
    loaded INTEGER NOT NULL DEFAULT 0, -- the load (run) that last read it from the list
    fields TEXT,                       -- its list row as JSON, for personalised messages
    relay TEXT NOT NULL DEFAULT ''     -- the relay that answered last ('': none yet)
);
-- Only the recipients still to send, in group order: what claim() scans.
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (grp, next_try)
    WHERE state IN {TO_SEND};
"""

SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}  # never a value from outside into the SQL


def _reader(fields: tuple[str, ...]) -> dict[str, str]:
    """``json_extract(r.value, '$[i]')`` for each field of a row sent as a JSON array: the
    positions come from the one tuple that also lays the rows out."""
    return {name: f"json_extract(r.value, '$[{i}]')" for i, name in enumerate(fields)}


# The writer's bulk statements each take every queued row as one JSON array, so a batch is
# one statement whatever its size (docs/design.md: the journal writer).
MARK_DATA = (
    f"UPDATE recipients SET state = '{JournalState.DATA}' "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
# Results: the recipients of a transaction mostly share one decision (all accepted, by the
# same reply, at the same time), so decisions go as runs alike but for the id: the decided
# fields once, then the ids (`decision_runs`). The runs are read once (MATERIALIZED), not
# once per recipient; each id then updates its row. A `Decision` itself is a run of one: its
# id, a number, is a single row to json_each.
_DECIDED = Decision._fields[:-1]  # every field but the id, the last
_d = _reader((*_DECIDED, "ids"))
RECORD = (
    f"WITH d AS MATERIALIZED (SELECT {', '.join(f'{_d[f]} AS {f}' for f in _d)}"
    " FROM json_each(?) AS r) "
    "UPDATE recipients SET state = d.state, code = d.code, message = d.message,"
    " attempts = attempts + d.tried, run_attempts = run_attempts + d.tried,"
    " first_try = COALESCE(first_try, d.at), next_try = d.next_try,"
    " relay = CASE d.relay WHEN '' THEN recipients.relay ELSE d.relay END"
    " FROM d, json_each(d.ids) AS i WHERE recipients.id = i.value"
)
_decided = operator.itemgetter(*range(len(_DECIDED)))


def decision_runs(decisions: Iterable[Decision]) -> list[list[Any]]:
    """RECORD's rows: each run of decisions alike but for the id, as its fields and ids."""
    return [
        [*decided, [decision.id for decision in run]]
        for decided, run in itertools.groupby(decisions, _decided)
    ]


# A claim: the due recipients of the groups up to :last (chosen first), one row per group
# in group order, then the same rows put in flight. Only the writer writes, and both run in
# one transaction: the update takes exactly the rows the select read.


def _due(table: str = "") -> str:
    return (
        f"{table}state IN {TO_SEND} AND {table}next_try <= :now"
        f" AND {table}grp >= :low AND {table}grp <= :last"
    )


def _each(column: str) -> str:
    """A group's values of `column`: the value itself for a group of one, else a JSON array."""
    return f"CASE COUNT(*) WHEN 1 THEN {column} ELSE json_group_array({column}) END"


CLAIMED = (
    "SELECT r.grp, g.message_id, g.headers, COUNT(*), MAX(r.run_attempts),"
    f" {_each('r.id')}, {_each('r.addr')}, {_each('r.name')},"
    " CASE COUNT(*) WHEN 1 THEN r.fields ELSE json_group_array(json(r.fields)) END"
    " FROM recipients AS r JOIN groups AS g ON g.id = r.grp"
    f" WHERE {_due('r.')} GROUP BY r.grp ORDER BY r.grp"
)
CLAIM = f"UPDATE recipients SET state = '{JournalState.INFLIGHT}' WHERE {_due()}"

# Loading: a batch's addresses looked up, and its new rows inserted, one statement each. The
# k-th new row (r.key, its place in the array) goes to the group that `journal.sqlite._Fill`
# names; its id follows the list's order.
LOOKUP = "SELECT key, id, loaded FROM recipients WHERE key IN (SELECT value FROM json_each(?))"
GROUP_OF = "CASE WHEN r.key < :room THEN :group ELSE :next + (r.key - :room) / :size END"
NEW_ROW = ("key", "addr", "name", "fields")  # the layout of INSERT's rows
_n = _reader(NEW_ROW)
INSERT = (
    "INSERT INTO recipients (key, addr, name, grp, loaded, fields)"
    f" SELECT {_n['key']}, {_n['addr']}, {_n['name']}, {GROUP_OF}, :load, {_n['fields']}"
    " FROM json_each(:rows) AS r ORDER BY r.key"
)
# A batch of bare ASCII addresses (no display name, no fields: most long lists) as an array
# of strings, with no JSON to take apart per row; SQLite's lower() is str.lower() on ASCII.
INSERT_PLAIN = (
    "INSERT INTO recipients (key, addr, grp, loaded)"
    f" SELECT lower(r.value), r.value, {GROUP_OF}, :load FROM json_each(:rows) AS r"
    " ORDER BY r.key"
)
assert Decision._fields[-1] == "id"

# From each older format to the next, run in order when a run opens an older journal (one
# transaction with the new version's stamp). Readers (status, report) read old ones as they
# are (`journal.reader`).
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE recipients ADD COLUMN relay TEXT NOT NULL DEFAULT ''",
}
del _d, _n


def check_sqlite(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """Refuse an SQLite older than the journal's statements need.

    :raises JournalError: with the version found and what to do.
    """
    if version < MIN_SQLITE:
        found = ".".join(map(str, version))
        need = ".".join(map(str, MIN_SQLITE))
        raise JournalError(
            f"this Python's SQLite is {found}; the journal needs {need} or newer "
            "(use a newer Python, or one built against a newer libsqlite3)"
        )
