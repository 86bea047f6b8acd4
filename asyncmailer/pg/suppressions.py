"""The suppression store of a shared ledger: the addresses and @domains that no campaign on
that database sends to, seen alike by every worker on every host (`asyncmailer suppress`
with a campaign that has a `ledger:`, a run's bounces, later a bounce reader). The same
operations as the state folder's store (`journal.suppressions.SuppressionStore`); each call
is one transaction on a connection of its own."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import psycopg

from ..ledger_url import LedgerUrl
from ..suppression import Entry, Reason, Suppression
from .database import Connection, connect, migrate, translate

__all__ = ["PgSuppressionStore"]

T = TypeVar("T")
_ADD = (
    "INSERT INTO asyncmailer_suppressions (key, reason, code, note, campaign, added)"
    " SELECT t.k, t.r, t.c, t.n, t.p, t.a"
    " FROM unnest(%(keys)s::text[], %(reasons)s::text[], %(codes)s::text[], %(notes)s::text[],"
    " %(campaigns)s::text[], %(added)s::float8[]) AS t(k, r, c, n, p, a)"
    " WHERE NOT EXISTS (SELECT 1 FROM asyncmailer_suppressions_removed AS x"
    " WHERE x.key = t.k AND x.at >= %(removed_after)s)"
    " ON CONFLICT (key) DO NOTHING"
)


class PgSuppressionStore:
    """The suppressions of the ledger at `url`.

    :raises JournalError: (from every method) the database cannot be reached or used (the
        password masked).
    """

    def __init__(self, url: LedgerUrl) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"<PgSuppressionStore {self.url.masked}>"

    @property
    def where(self) -> str:
        return f"the ledger {self.url.masked}"

    async def add(self, entries: Iterable[Entry], *, unless_removed_after: float = 0.0) -> int:
        now = time.time()
        unique = {e.key: e for e in reversed(list(entries))}  # the first of a key wins
        rows = [unique[key] for key in sorted(unique)]  # one order: no deadlock between adds
        if not rows:
            return 0

        async def add(conn: Connection) -> int:
            cursor = await conn.execute(
                _ADD,
                {
                    "keys": [e.key for e in rows],
                    "reasons": [e.reason.value for e in rows],
                    "codes": [e.code for e in rows],
                    "notes": [e.note for e in rows],
                    "campaigns": [e.campaign for e in rows],
                    "added": [e.added or now for e in rows],
                    # No time given: no removal holds an entry back.
                    "removed_after": unless_removed_after or float("inf"),
                },
            )
            return cursor.rowcount

        return await self._run(add)

    async def remove(self, keys: Sequence[str]) -> list[str]:
        async def remove(conn: Connection) -> list[str]:
            cursor = await conn.execute(
                "DELETE FROM asyncmailer_suppressions WHERE key = ANY(%s::text[]) RETURNING key",
                (list(keys),),
            )
            found = {key for (key,) in await cursor.fetchall()}
            await conn.execute(
                "INSERT INTO asyncmailer_suppressions_removed (key, at)"
                " SELECT k, %s FROM unnest(%s::text[]) AS k"
                " ON CONFLICT (key) DO UPDATE SET at = excluded.at",
                (time.time(), sorted(found)),
            )
            return [key for key in keys if key in found]

        return await self._run(remove)

    async def entries(self) -> list[Entry]:
        async def read(conn: Connection) -> list[Entry]:
            cursor = await conn.execute(
                "SELECT key, reason, code, note, campaign, added FROM asyncmailer_suppressions"
                " ORDER BY key"
            )
            return [Entry(k, Reason(r), c, n, p, a) for k, r, c, n, p, a in await cursor.fetchall()]

        return await self._run(read)

    async def suppression(self) -> Suppression:
        async def read(conn: Connection) -> Suppression:
            cursor = await conn.execute(
                "SELECT key, reason, code, campaign FROM asyncmailer_suppressions"
            )
            return Suppression(
                {
                    key: Entry(key, Reason(r), c, campaign=p).why
                    for key, r, c, p in await cursor.fetchall()
                }
            )

        return await self._run(read)

    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work` in one transaction on a connection of its own (the schema made or brought
        up to date first)."""
        conn = await connect(self.url)
        try:
            await migrate(conn, self.url)
            async with conn.transaction():
                return await work(conn)
        except psycopg.Error as err:
            raise translate(self.url, err, "cannot use the suppression store of") from None
        finally:
            await conn.close()
