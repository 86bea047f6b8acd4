"""Recurring runs: occurrences run, resumed, skipped as missed, never run twice at once; an
injected clock for the decisions, the real one end to end (tests/test_cli.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import JournalError
from asyncmailer.journal.runs import Catalog, RunCatalog, RunRecord
from asyncmailer.run.recurring import Recurring
from asyncmailer.run.runs import RunBook, Runs, fingerprint
from asyncmailer.schedule import Schedule

from ..conftest import CampaignFactory


async def test_missed_occurrences_are_skipped_and_told_and_the_latest_runs(
    make_campaign: CampaignFactory,
) -> None:
    path = make_campaign(schedule={"cron": "0 * * * *", "timezone": "UTC", "grace": "10m"})
    campaign = await load_campaign(path, env={})
    assert campaign.schedule == Schedule(cron="0 * * * *", timezone=ZoneInfo("UTC"), grace=600)
    # The last run was the 08:00 one; the machine was off until 12:05.
    catalog = RunCatalog(campaign.state_dir, campaign.id)
    done = RunRecord(
        id="20261201T080000Z",
        started="2026-12-01T08:00:00Z",
        journal="x",
        fingerprint=fingerprint(campaign),
        scheduled="2026-12-01T08:00:00Z",
        ended="2026-12-01T08:00:01Z",
    )
    catalog.save(None, [done])
    told: list[str] = []
    ran: list[str] = []
    stop = asyncio.Event()

    async def run_once(_campaign: object, runs: RunBook, record: RunRecord) -> int:
        ran.append(record.id)
        stop.set()
        return 0

    recurring = Recurring(
        [campaign],
        run_once=run_once,
        stop=stop,
        tell=told.append,
        clock=lambda: datetime(2026, 12, 1, 12, 5, tzinfo=UTC),
    )
    assert await asyncio.wait_for(recurring.run(), 30) == 75
    assert ran == ["20261201T120000Z"]
    skipped = [line for line in told if "skipped" in line]
    assert [line.split("occurrence of ")[1][:16] for line in skipped] == [
        "2026-12-01 09:00",
        "2026-12-01 10:00",
        "2026-12-01 11:00",
    ]
    assert any("run 20261201T120000Z begins" in line for line in told)


async def test_an_unfinished_run_goes_on_at_the_next_occurrence(
    make_campaign: CampaignFactory,
) -> None:
    # A drip: the run of 08:00 stopped at its daily quota; at 09:00 it goes on, no new run.
    path = make_campaign(schedule={"cron": "0 * * * *", "timezone": "UTC", "grace": "10m"})
    campaign = await load_campaign(path, env={})
    catalog = RunCatalog(campaign.state_dir, campaign.id)
    unfinished = RunRecord(
        id="20261201T080000Z",
        started="2026-12-01T08:00:00Z",
        journal="x",
        fingerprint=fingerprint(campaign),
        scheduled="2026-12-01T08:00:00Z",
    )
    catalog.save(None, [unfinished])
    ran: list[str] = []
    stop = asyncio.Event()

    async def run_once(_campaign: object, runs: RunBook, record: RunRecord) -> int:
        ran.append(record.id)
        stop.set()
        return 0

    clock = lambda: datetime(2026, 12, 1, 9, 0, 3, tzinfo=UTC)  # noqa: E731
    told: list[str] = []
    recurring = Recurring([campaign], run_once=run_once, stop=stop, tell=told.append, clock=clock)
    await asyncio.wait_for(recurring.run(), 30)
    assert ran == ["20261201T080000Z"]
    assert any("run 20261201T080000Z goes on" in line for line in told)
    records = catalog.load().runs
    assert [r.id for r in records] == ["20261201T080000Z"]
    assert records[0].covers == ["20261201T090000Z"]  # served by that run: never run again


async def test_a_run_cut_off_goes_on_at_the_next_start_once_even_past_its_grace(
    make_campaign: CampaignFactory,
) -> None:
    # The 09:00 run was cut off (a crash); the scheduler starts again at 11:00, past the
    # grace of that occurrence, with the next one tomorrow: the run goes on now, and once.
    path = make_campaign(schedule={"cron": "0 9 * * *", "timezone": "UTC", "grace": "10m"})
    campaign = await load_campaign(path, env={})
    catalog = RunCatalog(campaign.state_dir, campaign.id)
    cut_off = RunRecord(
        id="20261201T090000Z",
        started="2026-12-01T09:00:00Z",
        journal="x",
        fingerprint=fingerprint(campaign),
        scheduled="2026-12-01T09:00:00Z",
    )
    catalog.save(None, [cut_off])
    ran: list[str] = []
    stop = asyncio.Event()

    async def run_once(_campaign: object, runs: RunBook, record: RunRecord) -> int:
        ran.append(record.id)
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return 75  # stopped again (say, by the daily quota): not tried over and over

    clock = lambda: datetime(2026, 12, 1, 11, 0, tzinfo=UTC)  # noqa: E731
    told: list[str] = []
    recurring = Recurring([campaign], run_once=run_once, stop=stop, tell=told.append, clock=clock)
    await asyncio.wait_for(recurring.run(), 30)
    assert ran == ["20261201T090000Z"]
    assert any("run 20261201T090000Z goes on (it was cut off)" in line for line in told)
    (record,) = catalog.load().runs
    assert record.covers == []  # no occurrence used up: tomorrow's still begins a run


async def test_two_schedulers_of_one_campaign_cannot_both_run_it(
    make_campaign: CampaignFactory,
) -> None:
    campaign = await load_campaign(make_campaign(schedule={"every": "1h"}), env={})
    async with Runs(campaign):
        with pytest.raises(JournalError, match=r"being sent or scheduled by process \d+ on "):
            async with Runs(campaign):
                pass


async def test_a_campaign_without_a_schedule_is_refused(make_campaign: CampaignFactory) -> None:
    campaign = await load_campaign(make_campaign(), env={})
    with pytest.raises(ValueError, match="has no schedule"):
        Recurring([campaign], run_once=None, stop=asyncio.Event(), tell=print)  # type: ignore[arg-type]


async def test_the_catalog_is_written_whole(tmp_path: Path) -> None:
    catalog = RunCatalog(tmp_path, "c")
    record = RunRecord(id="r1", started="2026-12-01T00:00:00Z", journal="c.journal.sqlite")
    catalog.save("/x/c.yaml", [record])
    assert json.loads(catalog.path.read_text())["runs"][0]["id"] == "r1"
    assert catalog.load() == Catalog(source="/x/c.yaml", runs=[record])
    assert [p.name for p in tmp_path.iterdir()] == ["c.runs.json"]  # no temporary left
