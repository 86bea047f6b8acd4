"""The shared suppression store: entries added once, removed, listed, read as a Suppression;
the contract run against both kinds, a state folder's file and a shared ledger's table (a
real PostgreSQL server, tests/postgres.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import InputError, JournalError
from asyncmailer.journal.suppressions import (
    Entry,
    SuppressionStore,
    campaign_suppression,
    store_path,
)
from asyncmailer.ledger_url import LedgerUrl
from asyncmailer.suppression import Reason, SuppressionStorage

from ..conftest import CampaignFactory


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SuppressionStorage:
    if request.param == "sqlite":
        return SuppressionStore.of(tmp_path / "state")
    from asyncmailer.pg.suppressions import PgSuppressionStore

    return PgSuppressionStore(LedgerUrl(request.getfixturevalue("pg_url")))


async def test_a_state_folders_store_is_a_file_of_its_owner_made_on_the_first_add(
    tmp_path: Path,
) -> None:
    store = SuppressionStore.of(tmp_path / "state")
    assert await store.entries() == []  # no store yet: none, and no file made
    assert not store.path.exists()
    await store.add([Entry("bob@example.org", Reason.BOUNCE)])
    assert store.path == store_path(tmp_path / "state")
    assert store.path.stat().st_mode & 0o077 == 0  # addresses: the owner's only


async def test_entries_are_added_once_and_keep_their_first_reason(
    store: SuppressionStorage,
) -> None:
    assert await store.entries() == []
    added = await store.add(
        [
            Entry("bob@example.org", Reason.BOUNCE, "550 5.1.1", "User unknown", "news"),
            Entry("@blocked.example", Reason.MANUAL, note="asked by legal"),
        ]
    )
    assert added == 2
    again = await store.add([Entry("bob@example.org", Reason.UNSUBSCRIBE)])
    assert again == 0
    entries = await store.entries()
    assert [(e.key, e.reason, e.code, e.campaign) for e in entries] == [
        ("@blocked.example", Reason.MANUAL, None, None),
        ("bob@example.org", Reason.BOUNCE, "550 5.1.1", "news"),
    ]
    assert abs(entries[1].added - time.time()) < 60
    suppression = await store.suppression()
    assert suppression.why("BOB@example.org") == "suppressed: bounce 550 5.1.1 (news)"
    assert suppression.why("x@blocked.example") == "suppressed: manual"


async def test_a_removed_entry_is_not_added_back_by_an_older_run(
    store: SuppressionStorage,
) -> None:
    began = time.time() - 10  # a run that began before the removal
    await store.add([Entry("bob@example.org", Reason.BOUNCE, "550 5.1.1")])
    assert await store.remove(["bob@example.org", "nobody@example.org"]) == ["bob@example.org"]
    bounce = Entry("bob@example.org", Reason.BOUNCE, "550 5.1.1")
    assert await store.add([bounce], unless_removed_after=began) == 0  # its journal again
    assert await store.entries() == []
    # A run begun after the removal that finds the address gone again adds it.
    assert await store.add([bounce], unless_removed_after=time.time() + 1) == 1
    # So does the user, whenever.
    await store.remove(["bob@example.org"])
    assert await store.add([Entry("bob@example.org", Reason.MANUAL)]) == 1


async def test_concurrent_writers_share_the_store(store: SuppressionStorage) -> None:
    # Two runs ending at once, and the command line: each call is its own transaction.
    batches = [
        [Entry(f"u{n}.{i}@example.org", Reason.BOUNCE) for i in range(200)] for n in range(4)
    ]
    counts = await asyncio.gather(*(store.add(batch) for batch in batches))
    assert counts == [200] * 4
    assert len(await store.suppression()) == 800


async def test_a_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "suppressions.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(JournalError, match="database of something else") as caught:
        await SuppressionStore(path).add([Entry("bob@example.org", Reason.MANUAL)])
    assert str(path) in str(caught.value)
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(JournalError, match="cannot use the suppression store"):
        await SuppressionStore(path).entries()


async def test_a_campaign_honours_its_file_and_the_store_unless_told(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    (tmp_path / "suppressed.txt").write_text("carol@example.net\n@blocked.example\n")
    path = make_campaign(suppression_file="suppressed.txt", state_dir="state")
    campaign = await load_campaign(path, env={})
    await SuppressionStore.of(campaign.state_dir).add(
        [Entry("bob@example.org", Reason.UNSUBSCRIBE, campaign="older")]
    )
    both = await campaign_suppression(campaign)
    assert both.why("carol@example.net") == "suppressed: suppressed.txt line 1"
    assert both.why("bob@example.org") == "suppressed: unsubscribe (older)"
    assert "x@blocked.example" in both
    alone = await campaign_suppression(
        await load_campaign(
            make_campaign(
                suppression_file="suppressed.txt", state_dir="state", shared_suppression=False
            ),
            env={},
        )
    )
    assert "carol@example.net" in alone and "bob@example.org" not in alone


async def test_a_bad_line_of_the_campaign_file_stops_with_file_and_line(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    (tmp_path / "suppressed.txt").write_text("carol@example.net\n\ncarol@@example.net\n")
    campaign = await load_campaign(make_campaign(suppression_file="suppressed.txt"), env={})
    with pytest.raises(InputError) as caught:
        await campaign_suppression(campaign)
    assert str(caught.value).startswith(f"{tmp_path / 'suppressed.txt'}:3: ")
