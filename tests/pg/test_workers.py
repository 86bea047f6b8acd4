"""Several `asyncmailer worker` processes on one campaign, sharing a real PostgreSQL ledger,
sending into one SMTP server (tests/faulty.py, in this test's event loop): one worker killed
with SIGKILL mid-run, and the database restarted mid-run. Every recipient is accepted
exactly once, except those reported unknown (at most what the killed worker had in flight),
and none is received twice."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ..conftest import CampaignFactory, plain_list_campaign, run_cli, start_cli
from ..faulty import Faults, FaultyServer
from ..postgres import PASSWORD, PgServer

CONCURRENCY = 4
GROUP = 5


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _states(url: str) -> dict[str, str]:
    with psycopg.connect(url) as db:
        return dict(db.execute("SELECT addr, state FROM asyncmailer_recipients").fetchall())


def _check_once(server: FaultyServer, states: dict[str, str], count: int) -> None:
    """Accepted: received exactly once; unknown: at most once; nothing else left."""
    received = collections.Counter(server.delivered)
    assert len(states) == count
    assert set(states.values()) <= {"accepted", "unknown"}, collections.Counter(states.values())
    twice = [addr for addr, n in received.items() if n > 1]
    assert not twice, f"received twice: {twice[:5]}"
    for addr, state in states.items():
        if state == "accepted":
            assert received[addr] == 1, addr
    assert set(received) <= set(states)


async def _workers(
    path: Path, tmp_path: Path, url: str, count: int, *extra: str
) -> list[asyncio.subprocess.Process]:
    env = {**os.environ, "ASYNCMAILER_LEDGER": url}
    return [
        await start_cli(
            "worker",
            str(path),
            "-q",
            *extra,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _campaign(make_campaign: CampaignFactory, port: int, count: int, **keys: Any) -> Path:
    return plain_list_campaign(
        make_campaign,
        port,
        (f"user{i}@example.com" for i in range(count)),
        group_size=GROUP,
        concurrency=CONCURRENCY,
        retry_delay=0.01,
        campaign="pg-workers",
        **keys,
    )


async def test_a_worker_killed_mid_run_loses_nothing_and_sends_nothing_twice(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    count = 3000
    # Slow replies, so the run lasts long enough to kill a worker in the middle of it.
    server = await FaultyServer(Faults(final_delay=0.004, final_delay_times=None)).start()
    try:
        path = _campaign(make_campaign, server.port, count)
        first, second = await _workers(path, tmp_path, pg_url, 2, "--lease", "1.5")
        await _until(lambda: len(server.delivered) >= count // 4, 60, "a quarter delivered")
        os.kill(first.pid, signal.SIGKILL)
        _, err = await asyncio.wait_for(second.communicate(), 120)
        await first.wait()
        assert first.returncode == -signal.SIGKILL
        assert second.returncode in (0, 1), err.decode()
        states = _states(pg_url)
        _check_once(server, states, count)
        unknown = sum(1 for s in states.values() if s == "unknown")
        # At most the killed worker's transactions past DATA: one per connection.
        assert unknown <= CONCURRENCY * GROUP, unknown
        assert PASSWORD not in err.decode()
    finally:
        await server.stop()


async def test_the_database_restarting_mid_run_loses_and_duplicates_nothing(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str, pg_server: PgServer
) -> None:
    count = 2000
    server = await FaultyServer(Faults(final_delay=0.004, final_delay_times=None)).start()
    try:
        path = _campaign(make_campaign, server.port, count)
        workers = await _workers(path, tmp_path, pg_url, 2)
        await _until(lambda: len(server.delivered) >= count // 4, 60, "a quarter delivered")
        await asyncio.to_thread(pg_server.restart)
        back = len(server.delivered)  # the database is back: the rest go after this
        outcomes = [await asyncio.wait_for(w.communicate(), 120) for w in workers]
        for worker, (_, err) in zip(workers, outcomes, strict=True):
            assert worker.returncode == 0, err.decode()
        states = _states(pg_url)
        _check_once(server, states, count)
        assert set(states.values()) == {"accepted"}
        assert back < count  # the workers went on sending once the database was back
    finally:
        await server.stop()


@pytest.mark.parametrize("processes", [2])
async def test_processes_start_that_many_workers_on_one_run(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str, processes: int
) -> None:
    count = 400
    server = await FaultyServer(Faults()).start()
    try:
        path = _campaign(make_campaign, server.port, count)
        (parent,) = await _workers(path, tmp_path, pg_url, 1, "--processes", str(processes))
        _, err = await asyncio.wait_for(parent.communicate(), 120)
        assert parent.returncode == 0, err.decode()
        _check_once(server, _states(pg_url), count)
        with psycopg.connect(pg_url) as db:
            # Every worker takes a lease (ended ones are deleted as they are reaped).
            leases = db.execute("SELECT last_value FROM asyncmailer_leases_id_seq").fetchone()
            runs = db.execute("SELECT count(*), bool_and(ended IS NOT NULL) FROM asyncmailer_runs")
            assert leases is not None and leases[0] == processes
            assert runs.fetchone() == (1, True)  # one run, finished
        # A worker started after the end finds nothing to send (exit 4).
        (late,) = await _workers(path, tmp_path, pg_url, 1)
        _, err = await asyncio.wait_for(late.communicate(), 60)
        assert late.returncode == 4, err.decode()
    finally:
        await server.stop()


async def test_ctrl_c_to_processes_stops_each_worker_cleanly_once(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    """A terminal's Ctrl-C goes to its whole foreground process group. The parent passes
    it on; the workers, each in a group of its own, get it once (a second SIGINT would be
    "stop at once"), finish their transactions in flight and leave nothing unknown."""
    count = 2000
    server = await FaultyServer(Faults(final_delay=0.004, final_delay_times=None)).start()
    try:
        path = _campaign(make_campaign, server.port, count)
        parent = await start_cli(
            "worker",
            str(path),
            "-q",
            "--processes",
            "2",
            cwd=tmp_path,
            env={**os.environ, "ASYNCMAILER_LEDGER": pg_url},
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a group of its own, as a terminal's job is
        )
        await _until(lambda: len(server.delivered) >= count // 4, 60, "a quarter delivered")
        os.killpg(parent.pid, signal.SIGINT)
        _, raw = await asyncio.wait_for(parent.communicate(), 60)
        err = raw.decode()
        assert parent.returncode == 75, err
        assert err.count("finishing the transactions in flight") == 2, err
        assert "stopped at once" not in err, err
        states = _states(pg_url)
        assert set(states.values()) <= {"accepted", "pending"}, collections.Counter(states.values())
        assert "pending" in states.values()  # it stopped before the end
        received = collections.Counter(server.delivered)
        assert {a for a, s in states.items() if s == "accepted"} == set(received)
        assert set(received.values()) == {1}
    finally:
        await server.stop()


async def test_send_with_a_ledger_key_runs_on_the_shared_ledger(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    server = await FaultyServer(Faults()).start()
    try:
        path = plain_list_campaign(
            make_campaign, server.port, [f"u{i}@example.com" for i in range(30)], ledger=pg_url
        )
        code, out, err = await run_cli("send", str(path), cwd=tmp_path)
        assert code == 0, err
        assert "run " in err and "********" in err and PASSWORD not in out + err
        assert sorted(server.delivered) == sorted(f"u{i}@example.com" for i in range(30))
        journals = [p.name for p in (path.parent.parent / ".asyncmailer").glob("*.sqlite*")]
        assert [name for name in journals if not name.startswith("suppressions.")] == []
        code, out, err = await run_cli("send", str(path), cwd=tmp_path)
        assert code == 4 and "nothing to send" in err.lower(), err
        assert PASSWORD not in out + err
        # status, runs and report read the shared ledger, from any host: no files needed.
        code, out, err = await run_cli("status", str(path), cwd=tmp_path)
        assert code == 0, err
        assert "in the ledger postgresql://postgres:********@" in out
        assert "30  accepted" in out and PASSWORD not in out
        code, out, err = await run_cli("runs", str(path), cwd=tmp_path)
        assert code == 0 and out.splitlines()[0].startswith("RUN"), err
        (row,) = out.splitlines()[1:]
        assert "unfinished" not in row and " 30 " in row
        report = tmp_path / "report.csv"
        code, out, err = await run_cli("report", str(path), "-o", str(report), cwd=tmp_path)
        assert code == 0, err
        assert "30 recipients: 30 accepted" in out
        assert report.read_text().count("accepted") == 30
    finally:
        await server.stop()


async def test_status_of_a_shared_ledger_counts_the_list_rows_a_send_skipped(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    server = await FaultyServer(Faults()).start()
    try:
        rows = ["u0@example.com", "not an address", "u1@example.com"]
        path = plain_list_campaign(make_campaign, server.port, rows, ledger=pg_url)
        code, out, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
        assert code == 1 and "1 skipped" in out, err
        code, out, err = await run_cli("status", str(path), cwd=tmp_path)
        assert code == 0, err
        assert out.splitlines()[-2:] == [
            "          2  recipients in all",
            "1 bad list row skipped, not recipients (asyncmailer check names each)",
        ]
    finally:
        await server.stop()


async def test_a_worker_needs_a_shared_ledger_and_its_extra(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    path = plain_list_campaign(make_campaign, 2525, ["a@example.com"])
    code, _, err = await run_cli("worker", str(path), cwd=tmp_path)
    assert code == 2 and "a worker needs a shared ledger" in err, err
    # Without psycopg (the postgresql extra), it says what to install.
    program = (
        "import sys; sys.modules['psycopg'] = None; from asyncmailer.cli import main; "
        f"sys.exit(main(['worker', {str(path)!r}]))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        cwd=tmp_path,
        env={**os.environ, "ASYNCMAILER_LEDGER": pg_url},
        stderr=asyncio.subprocess.PIPE,
    )
    _, raw = await process.communicate()
    assert process.returncode == 2, raw.decode()
    assert "pip install 'asyncmailer[postgresql]'" in raw.decode()


def _runs(url: str) -> list[tuple[str, str | None, bool]]:
    """The campaign's runs: id, scheduled time (UTC, ISO), ended."""
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT id, to_char(scheduled AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'),"
            " ended IS NOT NULL FROM asyncmailer_runs ORDER BY serial"
        ).fetchall()
    return [(run_id, scheduled, ended) for run_id, scheduled, ended in rows]


async def test_two_schedulers_on_a_shared_ledger_run_each_occurrence_once(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    count = 400
    server = await FaultyServer(Faults(final_delay=0.002, final_delay_times=None)).start()
    try:
        # The occurrence of New Year 2026 is due (within its grace of a year); the next one
        # is a year away, so both schedulers see exactly one.
        path = _campaign(
            make_campaign, server.port, count, schedule={"cron": "0 0 1 1 *", "grace": "366d"}
        )
        env = {**os.environ, "ASYNCMAILER_LEDGER": pg_url}
        schedulers = [
            await start_cli("schedule", str(path), cwd=tmp_path, env=env) for _ in range(2)
        ]

        def finished() -> bool:
            try:
                return [ended for _, _, ended in _runs(pg_url)] == [True]
            except psycopg.Error:  # the schema is not there yet
                return False

        await _until(finished, 60, "the occurrence's run to end")
        for process in schedulers:
            process.send_signal(signal.SIGTERM)
        errs = []
        for process in schedulers:
            _, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 75, err.decode()
            errs.append(err.decode())
        assert _runs(pg_url) == [("20260101T000000Z", "2026-01-01T00:00:00", True)]
        # One scheduler began the run; the other joined it, or came after it ended.
        began = [e for e in errs if "run 20260101T000000Z begins" in e]
        assert len(began) == 1, errs
        assert sorted(server.delivered) == sorted(f"user{i}@example.com" for i in range(count))
        assert set(_states(pg_url).values()) == {"accepted"}
        # A scheduler started after the run ended does not run the occurrence again.
        late = await start_cli("schedule", str(path), cwd=tmp_path, env=env)
        await asyncio.sleep(3)
        late.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(late.communicate(), 30)
        assert late.returncode == 75, err.decode()
        assert "begins" not in err.decode() and "goes on" not in err.decode(), err.decode()
        assert len(server.delivered) == count
        assert PASSWORD not in "".join(errs) + err.decode()
    finally:
        await server.stop()


async def test_max_connections_hold_for_all_workers_together(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    # A server that resets every connection beyond 3 at once; 2 workers of concurrency 4.
    server = await FaultyServer(
        Faults(max_connections=3, final_delay=0.01, final_delay_times=None)
    ).start()
    try:
        path = plain_list_campaign(
            make_campaign,
            server.port,
            [f"u{i}@example.com" for i in range(1200)],
            group_size=2,
            concurrency=4,
            max_connections=3,
            campaign="capped",
        )
        workers = await _workers(path, tmp_path, pg_url, 2)
        for worker in workers:
            _, err = await asyncio.wait_for(worker.communicate(), 120)
            assert worker.returncode == 0, err.decode()
        assert server.refused_connections == 0  # never more than 3 open at once
        _check_once(server, _states(pg_url), 1200)
    finally:
        await server.stop()


async def test_each_relays_max_connections_hold_for_all_workers_together(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    # Two relays (`servers:`), each resetting every connection beyond 2 at once; 2 workers
    # that would each open 3 to each.
    faults = Faults(max_connections=2, final_delay=0.01, final_delay_times=None)
    servers = [await FaultyServer(faults).start() for _ in range(2)]
    try:
        entries = [
            {
                "name": f"relay{n}",
                "host": "127.0.0.1",
                "port": server.port,
                "security": "none",
                "concurrency": 3,
                "max_connections": 2,
            }
            for n, server in enumerate(servers)
        ]
        count = 600
        path = make_campaign(
            host=None,
            tls_ca_file=None,
            password=None,
            to=None,
            cc=None,
            recipients_file="list.txt",
            servers=entries,
            group_size=2,
            campaign="capped-relays",
        )
        (path.parent.parent / "list.txt").write_text(
            "".join(f"u{i}@example.com\n" for i in range(count))
        )
        workers = await _workers(path, tmp_path, pg_url, 2)
        for worker in workers:
            _, err = await asyncio.wait_for(worker.communicate(), 120)
            assert worker.returncode == 0, err.decode()
        assert [server.refused_connections for server in servers] == [0, 0]
        delivered = collections.Counter(a for server in servers for a in server.delivered)
        assert sorted(delivered) == sorted(f"u{i}@example.com" for i in range(count))
        assert set(delivered.values()) == {1}
        assert all(server.delivered for server in servers)  # both relays carried mail
    finally:
        for server in servers:
            await server.stop()


def test_the_exit_code_of_several_workers_is_the_worst_of_theirs() -> None:
    from asyncmailer.cli import _worst

    assert _worst([0, 0]) == 0
    assert _worst([0, 4]) == 0  # one came after the end: the run was done
    assert _worst([4, 4]) == 4
    assert _worst([0, 1, 75]) == 75
    assert _worst([1, -signal.SIGKILL]) == 75  # one was killed: run again
    assert _worst([75, 2, 1]) == 2
