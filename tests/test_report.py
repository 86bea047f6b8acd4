"""Report files and the final table."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from asyncmailer.errors import InputError
from asyncmailer.report import ReportWriter, format_table
from asyncmailer.results import CampaignReport, RecipientResult, Status

RESULTS = [
    RecipientResult("alice@example.com", Status.ACCEPTED, 250, "2.0.0 OK"),
    RecipientResult("bob@example.org", Status.REFUSED, 550, "5.1.1 User unknown, sorry"),
    RecipientResult("carol@example.net", Status.SKIPPED, None, "not attempted: x", 0, untried=True),
]


async def test_csv_report_is_written_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    async with ReportWriter(path) as writer:
        await writer.write(RESULTS[:1])
        # Flushed already: a crash now would leave alice in the file.
        assert path.read_text().splitlines() == [
            "recipient,status,code,message",
            "alice@example.com,accepted,250,2.0.0 OK",
        ]
        await writer.write(RESULTS[1:])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {
        "recipient": "bob@example.org",
        "status": "refused",
        "code": "550",
        "message": "5.1.1 User unknown, sorry",
    }
    assert rows[2]["code"] == ""


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
async def test_json_lines_report(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"report{suffix}"
    async with ReportWriter(path) as writer:
        await writer.write(RESULTS)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [r.as_row() for r in RESULTS]
    assert rows[2]["code"] is None


def test_unknown_suffix_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown report format"):
        ReportWriter(tmp_path / "report.txt")
    with pytest.raises(InputError, match="unknown report format"):
        ReportWriter(tmp_path / "report.json")  # one JSON document is not what we write


async def test_unwritable_report_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write the report"):
        async with ReportWriter(tmp_path / "missing-folder" / "r.csv"):
            pass


def test_table_aligns_columns() -> None:
    lines = format_table(RESULTS).splitlines()
    assert lines[0].split() == ["RECIPIENT", "STATUS", "CODE", "MESSAGE"]
    assert lines[2] == "bob@example.org    refused   550   5.1.1 User unknown, sorry"
    assert lines[3] == "carol@example.net  skipped         not attempted: x"


def test_summary_and_all_accepted() -> None:
    report = CampaignReport()
    observed = [report.all_accepted]  # nothing sent is not success
    report.add(RESULTS[:1])
    observed.append(report.all_accepted)
    report.add(RESULTS[1:])
    observed.append(report.all_accepted)
    assert observed == [False, True, False]
    assert report.summary() == "3 recipients: 1 accepted, 1 refused, 1 not attempted yet"
    report.add([RecipientResult("bad", Status.SKIPPED, None, "list.csv:7: bad address", 0)])
    assert report.summary() == (
        "4 recipients: 1 accepted, 1 refused, 1 skipped, 1 not attempted yet"
    )
    assert [r.recipient for r in report.problems] == ["bob@example.org", "bad"]
    assert str(RESULTS[1]) == "refused  bob@example.org 550 5.1.1 User unknown, sorry"


async def test_append_does_not_wait_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    async with ReportWriter(path) as writer:
        for result in RESULTS * 100:
            writer.append([result])  # returns at once; one writer drains the queue
        await writer.flush()
        written = [json.loads(line)["recipient"] for line in path.read_text().splitlines()]
        assert written == [r.recipient for r in RESULTS] * 100


async def test_appended_rows_reach_the_file_without_a_flush(tmp_path: Path) -> None:
    # A run killed mid-way never flushes: its rows must be in the file already.
    path = tmp_path / "report.csv"
    async with ReportWriter(path, linger=0.01) as writer:
        writer.append(RESULTS[:2])
        for _ in range(200):
            lines = path.read_text().splitlines()
            if len(lines) == 3:
                break
            await asyncio.sleep(0.01)
        assert lines[1:] == [
            "alice@example.com,accepted,250,2.0.0 OK",
            'bob@example.org,refused,550,"5.1.1 User unknown, sorry"',
        ]


async def test_a_full_disk_is_an_input_error(tmp_path: Path) -> None:
    full = tmp_path / "report.csv"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(InputError, match="cannot write the report"):
        async with ReportWriter(full) as writer:
            writer.append(RESULTS)
            await writer.flush()


async def test_a_row_that_cannot_be_encoded_fails_flush_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    # A bad row's message names a path whose bytes were not UTF-8: written back as those bytes.
    undecodable = RecipientResult("x", Status.SKIPPED, None, "/lists/\udcff.csv:2: bad", 0)
    async with ReportWriter(path) as writer:
        await asyncio.wait_for(writer.write([undecodable]), 10)
    assert path.read_bytes().splitlines()[1] == b"x,skipped,,/lists/\xff.csv:2: bad"
    # Anything else the writer thread cannot handle reaches flush(), not a wait for ever.
    with pytest.raises(UnicodeEncodeError):
        async with ReportWriter(tmp_path / "other.csv") as writer:
            writer.append([RecipientResult("y", Status.SKIPPED, None, "\ud800", 0)])
            await asyncio.wait_for(writer.flush(), 10)
