"""Occurrences of a schedule on the time line: cron in a zone across the 2026 clock changes,
plain intervals, and what counts as missed. An injected clock: no waiting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from asyncmailer.schedule import Schedule, parse_duration, parse_send_time, zone

BERLIN = ZoneInfo("Europe/Berlin")


def local(schedule: Schedule, after: datetime, count: int) -> list[str]:
    return [
        o.at.astimezone(BERLIN).strftime("%m-%d %H:%M %Z")
        for o in islice(schedule.after(after), count)
    ]


def test_a_daily_time_in_the_spring_gap_happens_once_at_the_time_it_maps_to() -> None:
    # 2026-03-29: clocks go from 02:00 to 03:00 in Berlin; 02:30 does not exist that day.
    daily = Schedule(cron="30 2 * * *", timezone=BERLIN)
    start = datetime(2026, 3, 27, 12, tzinfo=BERLIN)
    assert local(daily, start, 4) == [
        "03-28 02:30 CET",
        "03-29 03:30 CEST",
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]


def test_a_daily_time_the_autumn_change_repeats_happens_once() -> None:
    # 2026-10-25: clocks go from 03:00 back to 02:00; 02:30 happens twice on the wall.
    daily = Schedule(cron="30 2 * * *", timezone=BERLIN)
    start = datetime(2026, 10, 23, 12, tzinfo=BERLIN)
    assert local(daily, start, 3) == ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]


def test_hourly_across_both_changes_never_doubles_an_instant() -> None:
    hourly = Schedule(cron="0 * * * *", timezone=BERLIN)
    for start in (datetime(2026, 3, 29, 0, tzinfo=UTC), datetime(2026, 10, 24, 22, tzinfo=UTC)):
        instants = [o.at for o in islice(hourly.after(start), 6)]
        assert instants == sorted(set(instants))  # strictly increasing
        assert all(b - a <= timedelta(hours=2) for a, b in pairwise(instants))


def test_monday_at_nine_in_its_own_zone() -> None:
    weekly = Schedule(cron="0 9 * * MON", timezone=BERLIN)
    [first, second] = islice(weekly.after(datetime(2026, 12, 1, tzinfo=UTC)), 2)
    assert first.at == datetime(2026, 12, 7, 8, tzinfo=UTC)  # 09:00 CET
    assert second.at - first.at == timedelta(days=7)
    assert first.run_id == "20261207T080000Z"


def test_seconds_as_a_sixth_field_and_until() -> None:
    schedule = Schedule(
        cron="*/2 * * * * *",
        timezone=BERLIN,
        until=datetime(2026, 12, 1, 9, 0, 7, tzinfo=UTC),
    )
    found = [o.at.second for o in schedule.after(datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC))]
    assert found == [2, 4, 6]


def test_every_is_on_multiples_of_the_interval_so_hosts_agree() -> None:
    every = Schedule(every=2.0)
    start = datetime(2026, 12, 1, 9, 0, 1, 500_000, tzinfo=UTC)
    assert [o.at.second for o in islice(every.after(start), 3)] == [2, 4, 6]


def test_due_runs_the_latest_within_grace_and_reports_older_ones_as_missed() -> None:
    hourly = Schedule(cron="0 * * * *", timezone=ZoneInfo("UTC"), grace=600)
    now = datetime(2026, 12, 1, 12, 5, tzinfo=UTC)  # the machine was off since 08:30
    ran = datetime(2026, 12, 1, 8, tzinfo=UTC)
    current, missed = hourly.due(now, since=ran)
    assert current is not None and current.run_id == "20261201T120000Z"
    assert [o.run_id for o in missed] == [
        "20261201T090000Z",
        "20261201T100000Z",
        "20261201T110000Z",
    ]
    later = datetime(2026, 12, 1, 12, 20, tzinfo=UTC)  # past the grace: nothing to run now
    current, missed = hourly.due(later, since=datetime(2026, 12, 1, 11, tzinfo=UTC))
    assert current is None and [o.run_id for o in missed] == ["20261201T120000Z"]
    # The one still running (or finished) is not started twice.
    assert hourly.due(now, since=ran, done=frozenset({"20261201T120000Z"}))[0] is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("15", 15)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "0s", "-1h", "nan", "99999999999999d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_a_bad_cron_or_both_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid cron expression"):
        Schedule(cron="61 * * * *")
    with pytest.raises(ValueError, match="either cron or every"):
        Schedule(cron="* * * * *", every=5)
    with pytest.raises(ValueError, match="never comes"):
        Schedule(cron="0 0 31 2 *")


def test_send_at_local_is_that_time_in_each_zone_or_the_next_day_once_passed() -> None:
    from asyncmailer.schedule import local_due

    start = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)  # 08:30 in Berlin, 02:30 in New York
    nine = (9, 0, 0)
    assert local_due(nine, BERLIN, start) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert local_due(nine, ZoneInfo("America/New_York"), start) == datetime(
        2026, 12, 1, 14, 0, tzinfo=UTC
    )
    assert local_due(nine, ZoneInfo("Asia/Tokyo"), start) == datetime(  # 16:30 there: tomorrow
        2026, 12, 2, 0, 0, tzinfo=UTC
    )
    # The spring change in Berlin: 02:30 does not exist on 29 March; it is 03:30 then.
    spring = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    assert local_due((2, 30, 0), BERLIN, spring) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_the_local_zone_is_the_one_tz_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the C library uses for local time (and what "sending at ..." prints): TZ first.
    monkeypatch.setenv("TZ", "Europe/Berlin")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert zone(None) == BERLIN
    assert parse_send_time("2026-12-07 09:00", zone(None), now) == datetime(
        2026, 12, 7, 8, 0, tzinfo=UTC
    )
    monkeypatch.setenv("TZ", ":America/New_York")  # the POSIX form with a colon
    assert zone(None) == ZoneInfo("America/New_York")


@pytest.mark.parametrize("told", ["Nowhere/Land", "CET-1CEST,M3.5.0,M10.5.0/3"])
def test_a_tz_that_names_no_zone_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, told: str
) -> None:
    monkeypatch.setenv("TZ", told)
    with pytest.raises(ValueError, match=r"^TZ='.*' is not a time zone name; set TZ"):
        zone(None)
