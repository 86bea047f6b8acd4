"""Report files and the final table."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from asyncmailer.errors import InputError
from asyncmailer.report import ReportWriter, format_table
from asyncmailer.results import CampaignReport, RecipientResult, ResultPage, Status

RESULTS = [
    RecipientResult("alice@example.com", Status.ACCEPTED, 250, "2.0.0 OK", relay="gmail"),
    RecipientResult("bob@example.org", Status.REFUSED, 550, "5.1.1 User unknown, sorry"),
    RecipientResult("carol@example.net", Status.NOT_ATTEMPTED, None, "x", 0),
]


async def test_csv_report_is_written_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    async with ReportWriter(path) as writer:
        await writer.write(RESULTS[:1])
        # Flushed already: a crash now would leave alice in the file.
        assert path.read_text().splitlines() == [
            "recipient,status,code,message,relay",
            "alice@example.com,accepted,250,2.0.0 OK,gmail",
        ]
        await writer.write(RESULTS[1:])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {
        "recipient": "bob@example.org",
        "status": "refused",
        "code": "550",
        "message": "5.1.1 User unknown, sorry",
        "relay": "",
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
    assert lines[2] == "bob@example.org    refused        550   5.1.1 User unknown, sorry"
    assert lines[3] == "carol@example.net  not attempted        x"


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
            "alice@example.com,accepted,250,2.0.0 OK,gmail",
            'bob@example.org,refused,550,"5.1.1 User unknown, sorry",',
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
    assert path.read_bytes().splitlines()[1] == b"x,skipped,,/lists/\xff.csv:2: bad,"
    # Anything else the writer thread cannot handle reaches flush(), not a wait for ever.
    with pytest.raises(UnicodeEncodeError):
        async with ReportWriter(tmp_path / "other.csv") as writer:
            writer.append([RecipientResult("y", Status.SKIPPED, None, "\ud800", 0)])
            await asyncio.wait_for(writer.flush(), 10)


def page_of(results: list[RecipientResult]) -> ResultPage:
    """The rows a ledger reads back for these results."""
    return ResultPage(
        [
            (n, r.recipient, r.status.value, r.code, r.message, r.attempts, r.relay)
            for n, r in enumerate(results, 1)
        ]
    )


MIXED = [
    *(RecipientResult(f"a{n}@example.com", Status.ACCEPTED, 250, "ok") for n in range(5)),
    *RESULTS,
    RecipientResult("d@example.com", Status.DEFERRED, 451, "later", 2, "relay-b"),
    RecipientResult("u@example.com", Status.UNKNOWN, None, "cut", 1),
    *(RecipientResult(f"b{n}@example.com", Status.ACCEPTED, 250, "ok") for n in range(5)),
]


@pytest.mark.parametrize("keep", [3, 8, 100])
def test_a_page_of_rows_counts_and_keeps_what_its_results_would(keep: int) -> None:
    # The final read hands the report rows, not objects: the same report either way.
    as_rows, as_results = CampaignReport(keep=keep), CampaignReport(keep=keep)
    for part in (MIXED[:4], MIXED[4:11], MIXED[11:]):
        as_rows.add(page_of(part))
        as_results.add(part)
    assert as_rows == as_results
    assert page_of(MIXED)[5] == MIXED[5] and list(page_of(MIXED)) == MIXED


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
async def test_a_page_of_rows_is_written_as_its_results_would_be(
    tmp_path: Path, suffix: str
) -> None:
    async with ReportWriter(tmp_path / f"rows{suffix}") as writer:
        await writer.write(page_of(MIXED))
    async with ReportWriter(tmp_path / f"results{suffix}") as writer:
        await writer.write(MIXED)
    written = (tmp_path / f"rows{suffix}").read_bytes()
    assert written == (tmp_path / f"results{suffix}").read_bytes()
    assert len(written.splitlines()) == len(MIXED) + (suffix == ".csv")


async def test_keep_up_waits_for_the_rows_before_and_not_for_its_own(tmp_path: Path) -> None:
    # The final report's pages are read faster than they are written: each call waits for
    # the previous one's rows, so at most two pages are held in memory.
    path = tmp_path / "report.csv"
    async with ReportWriter(path, linger=10) as writer:
        await writer.keep_up(RESULTS[:1])  # nothing before it: no wait
        await asyncio.wait_for(writer.keep_up(RESULTS[1:2]), 10)
        assert "alice@example.com" in path.read_text()
        await asyncio.wait_for(writer.keep_up(RESULTS[2:]), 10)
        assert "bob@example.org" in path.read_text()
    assert len(path.read_text().splitlines()) == 1 + len(RESULTS)
