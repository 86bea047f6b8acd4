"""Which run a send belongs to: the rule both run stores apply, on records alone (the stores
themselves in tests/run/test_runs.py, tests/run/test_recurring.py and tests/pg/)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from asyncmailer.errors import InputError, NothingToSendError
from asyncmailer.journal.runs import RunRecord
from asyncmailer.run_choice import RunRequest
from asyncmailer.schedule import Occurrence

PRINT = {"subject": "s", "message": "m", "attachments": "a", "recipients": "r", "list": "l"}
NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


def _run(run_id: str, *, ended: bool, counts: dict[str, int] | None = None) -> RunRecord:
    return RunRecord(
        id=run_id,
        started="2026-12-01T08:00:00Z",
        journal="j",
        fingerprint=dict(PRINT),
        ended="2026-12-01T08:05:00Z" if ended else None,
        counts=counts,
    )


def test_the_first_send_begins_a_run_named_for_now() -> None:
    choice = RunRequest(campaign="c", current=PRINT).choose([], journal="j", now=NOW)
    assert choice.new and choice.record.id == "20261202T093000Z"
    assert choice.record.scheduled is None and choice.record.journal == "j"


def test_two_runs_begun_in_one_second_get_distinct_ids() -> None:
    runs = [_run("20261202T093000Z", ended=True)]
    choice = RunRequest(campaign="c", current=PRINT, new_run=True).choose(
        runs, journal="j", now=NOW
    )
    assert choice.record.id == "20261202T093000Z-2"


def test_an_unfinished_run_goes_on_and_a_finished_one_is_not_sent_again() -> None:
    unfinished = _run("r1", ended=False)
    choice = RunRequest(campaign="c", current=PRINT).choose([unfinished], journal="j")
    assert not choice.new and choice.record.id == "r1" and choice.changed == []
    with pytest.raises(NothingToSendError, match="Nothing to send"):
        RunRequest(campaign="c", current=PRINT).choose([_run("r1", ended=True)], journal="j")


def test_an_edited_campaign_goes_on_only_when_asked_and_a_new_list_reopens() -> None:
    edited = {**PRINT, "subject": "new"}
    with pytest.raises(InputError, match=r"changed since it began \(subject\)"):
        RunRequest(campaign="c", current=edited).choose([_run("r1", ended=False)], journal="j")
    kept = RunRequest(campaign="c", current=edited, keep_changes=True)
    assert kept.choose([_run("r1", ended=False)], journal="j").record.fingerprint == edited
    longer = RunRequest(campaign="c", current={**PRINT, "list": "more"})
    choice = longer.choose([_run("r1", ended=True)], journal="j")
    assert not choice.new and choice.changed == ["list"] and choice.record.ended is None
    assert choice.reload_list  # the list is read again: its new addresses are sent


def test_each_occurrence_is_a_run_of_its_own_and_an_unfinished_one_covers_the_next() -> None:
    nine = Occurrence(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
    ten = Occurrence(datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
    first = RunRequest(campaign="c", current=PRINT, occurrence=nine).choose([], journal="j")
    assert first.new and first.record.id == "20261202T090000Z"
    assert first.record.scheduled == "2026-12-02T09:00:00Z"
    # The 09:00 run is still going at 10:00 (a drip under a daily quota): it goes on.
    going = RunRequest(campaign="c", current=PRINT, occurrence=ten).choose(
        [first.record], journal="j"
    )
    assert not going.new and going.record.covers == ["20261202T100000Z"]
    # Another scheduler of a shared ledger at 09:00 joins the 09:00 run...
    joined = RunRequest(campaign="c", current=PRINT, occurrence=nine).choose(
        [first.record], journal="j"
    )
    assert not joined.new and joined.record.id == first.record.id
    # ...and once it ended, does not run it again.
    ended = _run("20261202T090000Z", ended=True)
    with pytest.raises(NothingToSendError):
        RunRequest(campaign="c", current=PRINT, occurrence=nine).choose([ended], journal="j")


def test_a_run_left_with_only_deferred_recipients_does_not_hold_back_the_next() -> None:
    left = _run("r1", ended=False, counts={"accepted": 5, "deferred": 2})
    ten = Occurrence(datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
    choice = RunRequest(campaign="c", current=PRINT, occurrence=ten).choose([left], journal="j")
    assert choice.new and choice.record.id == "20261202T100000Z"
