"""The run summary: its numbers from a report, its lines, and its file written whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from asyncmailer.results import CampaignReport, RecipientResult, Status
from asyncmailer.summary import summary_document, summary_lines, summary_path, write_summary


def report() -> CampaignReport:
    done = CampaignReport(started=1_000.0, ended=1_010.0, messages=4)
    done.add(
        [
            *(
                RecipientResult(f"a{i}@example.com", Status.ACCEPTED, 250, "2.0.0 OK")
                for i in range(8)
            ),
            RecipientResult("g@example.org", Status.REFUSED, 550, "5.1.1 User unknown"),
            RecipientResult("h@example.org", Status.REFUSED, 550, "5.1.2 No such domain"),
            RecipientResult("n@example.org", Status.REFUSED, 550, "No such user"),
            RecipientResult("d@example.org", Status.DEFERRED, 451, "4.7.1 Greylisted"),
            RecipientResult("l@example.org", Status.DEFERRED, None, "connection lost"),
            RecipientResult("s@example.org", Status.SUPPRESSED, None, "suppressed: manual", 0),
            RecipientResult("t@example.org", Status.NOT_ATTEMPTED, None, "not yet", 0),
        ]
    )
    done.this_run.update({Status.ACCEPTED: 8, Status.REFUSED: 3, Status.DEFERRED: 2})
    return done


def test_the_document_counts_statuses_and_failure_classes() -> None:
    document = summary_document(report(), campaign="news", run="20261202T030000Z", finished=False)
    assert document["statuses"] == {
        "accepted": 8,
        "refused": 3,
        "deferred": 2,
        "unknown": 0,
        "suppressed": 1,
        "skipped": 0,
        "not attempted": 1,
    }
    assert document["refused_by_class"] == {"5.1.x": 2, "550": 1}  # most first
    assert document["deferred_by_class"] == {"4.7.x": 1, "no reply": 1}
    send = document["this_send"]
    assert send["duration_seconds"] == 10.0 and send["messages"] == 4
    assert send["recipients_per_second"] == 1.1  # 11 answered (deferrals are no answer) / 10 s
    assert send["messages_per_second"] == 0.4
    assert document["started"] == "1970-01-01T00:16:40Z" and document["recipients"] == 15
    assert json.loads(json.dumps(document)) == document


def test_the_lines_show_what_is_there() -> None:
    lines = summary_lines(summary_document(report(), campaign="news", run="r1", finished=True))
    assert (
        lines[0]
        == "run r1: this send took 10.0 s, 4 messages, 1.1 recipients/s; the run's recipients:"
    )
    assert lines[1:] == [
        "          8  accepted",
        "          3  refused (5.1.x: 2, 550: 1)",
        "          2  deferred (4.7.x: 1, no reply: 1)",
        "          1  suppressed",
        "          1  not attempted",
    ]


def test_the_file_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = summary_path(tmp_path / "state", "news", "r1")
    assert path == tmp_path / "state" / "news.r1.summary.json"
    write_summary(path, {"version": 1, "n": 1})
    assert json.loads(path.read_text()) == {"version": 1, "n": 1}

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)  # the disk fills before the rename
    with pytest.raises(OSError):
        write_summary(path, {"version": 1, "n": 2})
    assert json.loads(path.read_text()) == {"version": 1, "n": 1}  # the old one, whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
