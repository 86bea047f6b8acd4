"""The command line, in-process for input errors and as a real subprocess end to end."""

from __future__ import annotations

import asyncio
import csv
import email
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncmailer import __version__
from asyncmailer.cli import main

from .conftest import (
    PASSWORD,
    USER,
    CampaignFactory,
    ServerFactory,
    list_campaign,
    plain_list_campaign,
    run_cli,
    start_cli,
)
from .dkimkeys import DOMAIN, SELECTOR, key_text, pem, verifies, write_key


def test_bad_config_is_one_line_and_exit_2(
    make_campaign: CampaignFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_campaign(port="465")
    assert main(["--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"asyncmailer: {path}:")
    assert "port: expected a whole number from 1 to 65535, got '465'" in lines[0]


def test_missing_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "nope.json")]) == 2
    assert (
        capsys.readouterr().err == f"asyncmailer: {tmp_path / 'nope.json'}: config file not found\n"
    )


def test_bad_report_suffix_exit_2(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-c", str(make_campaign()), "--report", str(tmp_path / "r.xlsx")]) == 2
    assert "unknown report format; name the file .csv or .jsonl" in capsys.readouterr().err


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["send", "--no-such-flag"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"asyncmailer {__version__}\n"


async def test_one_command_sends_the_reliances_campaign(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    make_campaign(port=running.server.ssl_port, files={"a.txt": b"attached"})
    # No arguments at all: reliances/config.json in the current folder, as the original ran.
    code, out, err = await run_cli("--report", "report.csv", cwd=tmp_path)

    assert code == 0, err
    assert "3 recipients: 3 accepted" in out
    assert re.search(r"^alice@example\.com +accepted +250 +2\.0\.0 OK", out, re.MULTILINE)
    with open(tmp_path / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["recipient"], r["status"], r["code"]) for r in rows] == [
        ("alice@example.com", "accepted", "250"),
        ("bob@example.org", "accepted", "250"),
        ("carol@example.net", "accepted", "250"),
    ]
    assert len(running.messages) == 1


async def test_a_finished_run_is_not_sent_again_and_its_report_is_there(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    make_campaign(port=running.server.ssl_port)
    assert (await run_cli(cwd=tmp_path))[0] == 0
    # Run again unchanged: it says when it was sent and to how many, with its own exit code.
    code, _out, err = await run_cli("--report", "again.csv", cwd=tmp_path)
    assert code == 4, err
    assert "was sent on" in err and "3 of 3 recipients accepted" in err and "--new-run" in err
    assert len(running.messages) == 1
    # The report of the run, from its journal, lists everyone.
    code, out, err = await run_cli("report", "reliances/config.json", "-o", "r.csv", cwd=tmp_path)
    assert code == 0, err
    assert "3 recipients: 3 accepted" in out
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["recipient"], r["status"]) for r in rows] == [
        ("alice@example.com", "accepted"),
        ("bob@example.org", "accepted"),
        ("carol@example.net", "accepted"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
    # --new-run sends it again to everyone; `runs` lists both runs.
    assert (await run_cli("--new-run", "-q", cwd=tmp_path))[0] == 0
    assert len(running.messages) == 2
    code, out, _ = await run_cli("runs", "reliances/config.json", cwd=tmp_path)
    assert code == 0 and len(out.splitlines()) == 3  # the header and two runs


async def test_refused_recipient_exit_1_and_jsonl_report(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(refuse={"bob@example.org": (550, "5.1.1 User unknown")})
    path = make_campaign(port=running.server.ssl_port)
    code, out, err = await run_cli("-c", str(path), "--report", "r.jsonl", "-q", cwd=tmp_path)

    assert code == 1, err
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows[1] == {
        "recipient": "bob@example.org",
        "status": "refused",
        "code": 550,
        "message": "5.1.1 User unknown",
        "relay": f"127.0.0.1:{running.server.ssl_port}",  # named by host:port by default
    }
    assert "3 recipients: 2 accepted, 1 refused" in out
    assert err == ""  # --quiet


async def test_wrong_password_exit_3_and_the_password_never_shows(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    wrong = "пароль-wrong-123"
    path = make_campaign(port=running.server.ssl_port, password=wrong)
    code, out, err = await run_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)

    assert code == 3
    assert f"127.0.0.1:{running.server.ssl_port}: login as {USER} failed: 535" in err
    assert "Traceback" not in err
    report = (tmp_path / "r.csv").read_text()
    assert "not attempted" in report
    for secret in (wrong, PASSWORD):
        assert secret not in out + err + report
    assert running.messages == []


async def test_wrong_ca_exit_3(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    import trustme

    running = await smtp_server()
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    path = make_campaign(port=running.server.ssl_port, tls_ca_file=str(other))
    code, _out, err = await run_cli("-c", str(path), cwd=tmp_path)
    assert code == 3
    assert "certificate verify failed" in err
    assert running.server.auth_attempts == []


async def test_starttls_not_offered_exit_3(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(offer_starttls=False, auth_require_tls=False)
    path = make_campaign(port=running.server.starttls_port, security="starttls")
    code, _out, err = await run_cli("-c", str(path), cwd=tmp_path)
    assert code == 3
    assert "does not offer STARTTLS; refusing to go on without TLS" in err
    assert running.server.auth_attempts == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_runs_a_campaign_end_to_end(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    ssl_port, starttls_port = free_port(), free_port()
    demo = tmp_path / ".demo"
    for security, port in (("ssl", ssl_port), ("starttls", starttls_port)):
        path = make_campaign(
            port=port,
            security=security,
            tls_ca_file=".demo/ca.pem",
            state_dir=f".state-{security}",  # two campaigns, not a resume of one
            bcc="archive@example.com",
            files={"отчёт.txt": "данные".encode()},
        )
        code, out, err = await run_cli(
            "serve",
            "--dir",
            str(demo),
            "--ssl-port",
            str(ssl_port),
            "--starttls-port",
            str(starttls_port),
            "--user",
            USER,
            "--password-file",
            str(path.parent / "your_pswd.txt"),
            "--",
            sys.executable,
            "-m",
            "asyncmailer",
            "-c",
            str(path),
            cwd=tmp_path,
        )
        assert code == 0, err
        assert "4 recipients: 4 accepted" in out
        assert f"stored in {demo / 'mail'}/" in out

    for rcpt in (
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
        "archive@example.com",
    ):
        stored = sorted((demo / "mail" / rcpt / "new").iterdir())
        assert len(stored) == 2  # one per run
        text = stored[0].read_bytes()
        assert f"Delivered-To: {rcpt}".encode() in text
        assert "отчёт.txt".encode() not in text  # RFC 2231-encoded, not raw UTF-8
        assert b"filename*=utf-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.txt" in text


async def test_serve_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    code, _out, err = await run_cli("serve", "--host", "0.0.0.0", "--dir", "d", cwd=tmp_path)
    assert code == 2
    assert "listens on loopback only" in err


def test_bad_body_fails_before_anything_is_sent_or_written(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_campaign(port=1)
    (tmp_path / "reliances" / "msg.txt").write_bytes("Привет".encode("utf-16"))
    report = tmp_path / "r.csv"
    assert main(["-c", str(path), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    body = tmp_path / "reliances" / "msg.txt"
    assert err == f"asyncmailer: {body}:1: not valid UTF-8 text (save the file as UTF-8)\n"
    assert not report.exists()


async def test_list_campaign_summarises_and_reports_every_row(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(refuse={"u3@example.com": (550, "5.1.1 User unknown")})
    (tmp_path / "list.txt").write_text(
        "".join(f"u{i}@example.com\n" for i in range(150)) + "broken@\nu5@example.com\n"
    )
    path = make_campaign(
        port=running.server.ssl_port, to=None, cc=None, recipients_file="list.txt", group_size=40
    )
    code, out, err = await run_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)

    assert code == 1, err
    assert (
        "151 recipients: 149 accepted, 1 refused, 1 skipped (1 duplicate in the list sent once)"
        in out
    )
    # Only the problems are listed, not 151 rows.
    assert re.search(r"^u3@example\.com +refused +550 +5\.1\.1 User unknown$", out, re.MULTILINE)
    assert re.search(r"^broken@ +skipped +.*list\.txt:151: 'broken@' is not of the form", out, re.M)
    assert "u4@example.com" not in out
    # Not a terminal: progress comes as plain lines on stderr, the last one complete.
    assert "asyncmailer: 151/150 recipients" not in err
    assert re.search(
        r"asyncmailer: 151/15\d recipients \(149 accepted, 1 refused, 1 skipped\)", err
    )
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 151
    assert sum(len(m.rcpt_tos) for m in running.messages) == 149


async def test_sigterm_finishes_transactions_in_flight_then_resume_completes(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    from .faulty import Faults, FaultyServer

    server = await FaultyServer(Faults(final_delay=0.05, final_delay_times=None)).start()
    try:
        addresses = [f"u{i}@example.com" for i in range(200)]
        path = plain_list_campaign(
            make_campaign, server.port, addresses, group_size=2, concurrency=2
        )
        process = await start_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)
        for _ in range(400):  # wait (at most 20 s) until it is really sending
            if server.messages:
                break
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 75, err.decode()
        assert "stopping: finishing the transactions in flight" in err.decode()
        assert "interrupted; run the same command again to resume" in err.decode()
        # Not a terminal: no blank line in front of the stop notice (nor anywhere).
        assert "\n\n" not in err.decode() and not err.startswith(b"\n"), err.decode()
        sent_before = len(server.delivered)
        assert 0 < sent_before < 200
        # The report already has every recipient: accepted ones, and the rest not attempted.
        with open(tmp_path / "r.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 200
        assert sum(r["status"] == "accepted" for r in rows) == sent_before

        code, _, err_text = await run_cli("-c", str(path), cwd=tmp_path)
        assert code == 0, err_text
        assert sorted(server.delivered) == sorted(f"u{i}@example.com" for i in range(200))
        code, out_text, _ = await run_cli("status", "-c", str(path), cwd=tmp_path)
        assert code == 0
        assert re.search(r"^\s+200\s+accepted$", out_text, re.MULTILINE)
    finally:
        await server.stop()


async def test_full_disk_for_the_journal_stops_cleanly_and_resume_completes(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes every write past 256 KiB fail, as a full disk."""
    import resource

    from .faulty import Faults, FaultyServer

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    server = await FaultyServer(Faults()).start()
    try:
        addresses = [f"u{i}@example.com" for i in range(8000)]
        path = plain_list_campaign(make_campaign, server.port, addresses)
        process = await start_cli("-c", str(path), cwd=tmp_path, preexec_fn=small_disk)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        text = err.decode()
        assert process.returncode == 2, text
        assert "cannot write the journal" in text and "Traceback" not in text
        assert len(text.strip().splitlines()) <= 3

        code, _, err_text = await run_cli("-c", str(path), cwd=tmp_path)
        assert code == 0, err_text
        assert sorted(server.delivered) == sorted(f"u{i}@example.com" for i in range(8000))
    finally:
        await server.stop()


async def test_rerun_sends_nothing_new_and_restart_sends_again(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    code, out, err = await run_cli("-c", str(path), cwd=tmp_path)
    assert code == 0, err
    assert "3 recipients: 3 accepted" in out
    code, out, err = await run_cli("-c", str(path), cwd=tmp_path)
    assert code == 4 and "Nothing to send" in err  # the run finished: not sent again
    assert len(running.messages) == 1
    code, out, err = await run_cli("-c", str(path), "--restart", cwd=tmp_path)
    assert code == 0, err
    assert "the previous run's journal is kept as" in err
    assert len(running.messages) == 2
    kept = list((tmp_path / ".asyncmailer").glob("config.json.journal.sqlite.*"))
    assert kept


async def test_output_whose_reader_has_gone_cuts_nothing_short(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """As `asyncmailer send | head -1`: every write to stdout fails (EPIPE). The send goes
    on to its end, and exits as it would have: not an internal error (exit 70)."""
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        process = await start_cli("-c", str(path), cwd=tmp_path, stdout=write)
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert b"accepted bob@example.org" in err  # what goes to stderr still goes
    assert b"internal error" not in err and b"Traceback" not in err
    [message] = running.messages
    assert len(message.rcpt_tos) == 3


async def test_status_before_any_run_and_with_state_dir(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    path = make_campaign()
    code, out, err = await run_cli("status", "-c", str(path), "--state-dir", "st", cwd=tmp_path)
    assert code == 0, err
    assert out.startswith(f"campaign {path} has not run yet (no journal at st/")


async def test_the_campaign_file_may_be_a_positional_argument(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    code, out, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    assert "3 recipients: 3 accepted" in out
    code, out, err = await run_cli("status", str(path), cwd=tmp_path)
    assert code == 0, err
    assert "3  accepted" in out
    code, out, err = await run_cli(str(path), "-q", cwd=tmp_path)  # `send` is the default
    assert code == 4, err  # the campaign was sent: the run is finished
    assert len(running.messages) == 1


async def test_status_counts_the_list_rows_a_send_skipped(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """A bad row is no recipient (the journal has no row for it), but `send` reports it
    `skipped`: `status` tells it too, as the last whole reading of the list found."""
    running = await smtp_server()
    rows = ["a@example.com", "not an address", "b@example.com", "<also not>"]
    path = list_campaign(make_campaign, running.server.ssl_port, rows)
    code, out, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 1 and "2 skipped" in out, err
    code, out, err = await run_cli("status", str(path), cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[-2:] == [
        "          2  recipients in all",
        "2 bad list rows skipped, not recipients (asyncmailer check names each)",
    ]
    # A row mended: the next reading counts again (the run is finished; its new row is sent).
    (path.parent.parent / "list.txt").write_text("a@example.com\nb@example.com\nc@example.com\n")
    code, out, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    code, out, err = await run_cli("status", str(path), cwd=tmp_path)
    assert "skipped" not in out and "3  recipients in all" in out, out


async def test_a_limited_new_run_says_to_go_on_without_new_run(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """Followed to the letter, "run the same command again" with --new-run in it would begin
    yet another run and send the first messages twice: the line names what to leave out."""
    running = await smtp_server()
    addresses = [f"u{i}@example.com" for i in range(6)]
    path = list_campaign(make_campaign, running.server.ssl_port, addresses, group_size=2)
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    code, _, err = await run_cli("send", str(path), "--new-run", "--limit", "1", cwd=tmp_path)
    assert code == 75, err
    hint = "run the same command again without --new-run to send the rest"
    assert f"stopped after 1 message (--limit); {hint}" in err
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)  # as it says
    assert code == 0, err
    delivered = [r for m in running.messages for r in m.rcpt_tos]
    assert sorted(delivered) == sorted(addresses * 2)  # each once per run, none more


def test_naming_the_campaign_twice_is_a_usage_error(
    make_campaign: CampaignFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(make_campaign())
    with pytest.raises(SystemExit) as caught:
        main(["send", path, "-c", path])
    assert caught.value.code == 2
    assert "name the campaign once" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["send", "c.json", "--limt", "2"],
            "send: error: unknown option '--limt'; did you mean '--limit'?",
        ),
        (
            ["c.json", "--dry-rn=out"],
            "send: error: unknown option '--dry-rn=out'; did you mean '--dry-run'?",
        ),
        (["status", "--zzz"], "status: error: unrecognized arguments: --zzz"),
        (["send", "a.json", "b.json"], "send: error: unrecognized arguments: b.json"),
    ],
)
def test_a_mistyped_option_names_the_commands_closest(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: asyncmailer {argv[0] if argv[0] != 'c.json' else 'send'} ")
    assert err.rstrip().endswith(said), err


@pytest.mark.parametrize(("typed", "meant"), [("stauts", "status"), ("sned", "send")])
def test_a_mistyped_command_gets_did_you_mean(
    typed: str,
    meant: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no file of that name here
    with pytest.raises(SystemExit) as caught:
        main([typed])
    assert caught.value.code == 2
    assert f"unknown command {typed!r}; did you mean {meant!r}?" in capsys.readouterr().err


async def _python(code: str, cwd: Path) -> tuple[int | None, str, str]:
    """Run `python -c CODE` in a fresh interpreter: its exit code, output and errors."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_serve_without_its_extra_is_an_install_hint_and_exit_2(tmp_path: Path) -> None:
    # A Python where aiosmtpd cannot be imported (None in sys.modules stops the import).
    code = (
        "import sys; sys.modules['aiosmtpd'] = None; "
        "from asyncmailer.cli import main; sys.exit(main(['serve']))"
    )
    returncode, _, err = await _python(code, tmp_path)
    assert returncode == 2
    assert "needs the 'server' extra" in err
    assert "pip install 'asyncmailer[server]'" in err
    assert "pip install -e '.[server]'" in err


async def test_a_plain_campaign_leaves_dkim_idna_and_html_parsing_unimported(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    # Start-up time: what only DKIM, a non-ASCII domain or an HTML body needs is imported by
    # the campaigns that have one, not by every run.
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    code = (
        "import sys; from asyncmailer.cli import main; "
        f"status = main(['-c', {str(path)!r}, '-q']); "
        "print(sorted({'cryptography', 'idna', 'html.parser'} & set(sys.modules))); "
        "sys.exit(status)"
    )
    returncode, out, err = await _python(code, tmp_path)
    assert returncode == 0, err
    assert len(running.messages) == 1
    assert out.splitlines()[-1] == "[]"


def test_send_at_a_time_that_has_passed_is_an_error(
    make_campaign: CampaignFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(make_campaign())
    assert main(["send", path, "--at", "2020-01-01 09:00", "--tz", "Europe/Berlin"]) == 2
    assert "2020-01-01 09:00:00 CET has passed; name a later time, or --at now" in (
        capsys.readouterr().err
    )
    assert main(["send", path, "--at", "soon"]) == 2
    assert main(["send", path, "--at", "now", "--tz", "Mars/Olympus"]) == 2
    assert "no such time zone: 'Mars/Olympus'" in capsys.readouterr().err


async def test_send_at_waits_then_sends_and_a_sigterm_while_waiting_sends_nothing(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    started = time.monotonic()
    code, out, err = await run_cli("send", str(path), "--at", soon, cwd=tmp_path)
    assert code == 0, err
    assert time.monotonic() - started >= 1.4
    assert "asyncmailer: sending at " in err and "3 recipients: 3 accepted" in out

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    process = await start_cli("send", str(path), "--new-run", "--at", later, cwd=tmp_path)
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"sending at" in line and (b"in 1 h" in line or b"in 59 min" in line)
    process.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 75
    assert b"stopped before the send time; nothing was sent" in rest
    assert len(running.messages) == 1


async def test_schedule_every_second_sends_one_run_per_occurrence_until_sigterm(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, schedule={"every": "1s"})
    process = await start_cli("schedule", str(path), "-q", cwd=tmp_path)
    await asyncio.sleep(3.6)
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 75, err
    code, out, _ = await run_cli("runs", str(path), cwd=tmp_path)
    rows = [line.split() for line in out.splitlines()[1:]]
    assert code == 0 and 3 <= len(rows) <= 5, out
    accepted = [int(row[4]) for row in rows]  # the ACCEPTED column
    # Each run sent to all three; the last may have been stopped before it began to send.
    assert all(count == 3 for count in accepted[:-1]) and accepted[-1] in (0, 3), out
    assert len(running.messages) == sum(count == 3 for count in accepted)  # a message a run
    for message in running.messages:
        assert sorted(message.rcpt_tos) == sorted(
            ["alice@example.com", "bob@example.org", "carol@example.net"]
        )


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for `condition`, failing the test after `timeout` seconds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_a_scheduler_killed_mid_run_resumes_that_run_without_a_duplicate(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    from .faulty import Faults, FaultyServer

    server = await FaultyServer(Faults(final_delay=0.05, final_delay_times=None)).start()
    try:
        addresses = [f"k{i}@example.com" for i in range(40)]
        path = plain_list_campaign(
            make_campaign,
            server.port,
            addresses,
            group_size=1,
            concurrency=1,
            schedule={"every": "1h"},  # the latest occurrence is within its grace: runs now
        )
        first = await start_cli("schedule", str(path), cwd=tmp_path)
        await until(lambda: len(server.messages) >= 5)
        first.kill()
        await first.wait()
        second = await start_cli("schedule", str(path), cwd=tmp_path)
        assert second.stderr is not None
        line = await asyncio.wait_for(second.stderr.readline(), 30)
        assert b"goes on" in line, line  # the same run, not a new one
        await until(lambda: len(set(server.delivered)) >= 39)
        await asyncio.sleep(0.5)
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.communicate(), 60)
        delivered = server.delivered
        assert len(delivered) == len(set(delivered))  # nobody twice
        # At most the one in flight when it was killed is missing: unknown, not resent.
        assert len(set(addresses) - set(delivered)) <= 1
        code, out, _ = await run_cli("runs", str(path), cwd=tmp_path)
        assert code == 0 and len(out.splitlines()) == 2  # one run
    finally:
        await server.stop()


async def test_a_list_row_with_terminal_escapes_is_printed_escaped(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\n\x1b]0;TITLE\x07\x1b[2J@evil\n")
    path = make_campaign(port=running.server.ssl_port, to=None, cc=None, recipients_file="list.txt")
    code, out, err = await run_cli("send", str(path), cwd=tmp_path)
    assert code == 1, err
    assert "\x1b" not in out and "\x1b" not in err and "\x07" not in out
    assert "\\x1b]0;TITLE" in out  # shown, escaped


async def test_send_at_local_sends_each_recipient_at_their_own_time(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    soon = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)  # as written
    (tmp_path / "list.csv").write_text(
        "email,tz\na@example.com,UTC\nb@example.com,Not/AZone\nc@example.com,Etc/GMT+1\n"
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        bcc=None,
        recipients_file="list.csv",
        send_at_local=soon.strftime("%H:%M:%S"),
        timezone_column="tz",
        timezone="UTC",
    )
    process = await start_cli("send", str(path), "-q", cwd=tmp_path)
    try:
        await until(lambda: len(running.messages) >= 2, timeout=30)
        assert datetime.now(UTC) >= soon - timedelta(seconds=0.2)  # not before its time
        # c is an hour behind UTC: its 'soon' is an hour away, so the run stays open for it.
        assert sorted(r for m in running.messages for r in m.rcpt_tos) == [
            "a@example.com",
            "b@example.com",  # not a zone: the campaign's
        ]
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 75
    finally:
        if process.returncode is None:  # a failed check must not leave it waiting an hour
            process.kill()
            await process.wait()
    code, out, _ = await run_cli("status", str(path), cwd=tmp_path)
    assert code == 0 and "1  pending" in out and "2  accepted" in out


# -- the run summary and `not attempted` --------------------------------------------------


async def test_the_run_summary_counts_what_the_server_received(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(
        refuse={
            "gone@example.org": (550, "5.1.1 User unknown"),
            "nouser@example.org": (550, "No such user"),
            "relay@example.org": (550, "5.7.1 Recipient address rejected: Access denied"),
        }
    )
    addresses = [f"u{i}@example.com" for i in range(7)]
    addresses += ["gone@example.org", "nouser@example.org", "relay@example.org", "s@example.net"]
    (tmp_path / "suppressed.txt").write_text("s@example.net\n")
    path = list_campaign(
        make_campaign,
        running.server.ssl_port,
        [*addresses, "bad row"],
        suppression_file="suppressed.txt",
        group_size=3,
        campaign="news",
        state_dir="state",
    )
    code, out, err = await run_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)
    assert code == 1, err

    [summary_file] = (tmp_path / "state").glob("news.*.summary.json")
    summary = json.loads(summary_file.read_text())
    [record] = json.loads((tmp_path / "state" / "news.runs.json").read_text())["runs"]
    assert summary_file.name == f"news.{record['id']}.summary.json"
    delivered = sum(len(m.rcpt_tos) for m in running.messages)
    assert delivered == 7
    assert summary["statuses"] == {
        "accepted": delivered,
        "refused": 3,
        "deferred": 0,
        "unknown": 0,
        "suppressed": 1,
        "skipped": 1,
        "not attempted": 0,
    }
    assert summary["refused_by_class"] == {"5.1.x": 1, "5.7.x": 1, "550": 1}
    assert summary["this_send"]["messages"] == len(running.messages)
    assert summary["this_send"]["statuses"]["accepted"] == delivered
    assert summary["recipients"] == 12 and summary["bad_rows"] == 1
    assert summary["finished"] is True and summary["run"] == record["id"]
    assert summary["this_send"]["duration_seconds"] > 0
    assert summary["this_send"]["recipients_per_second"] > 0
    assert f"run {record['id']}: this send took" in out
    assert re.search(r"\n\s+3\s+refused \(5\.1\.x: 1, 5\.7\.x: 1, 550: 1\)\n", out), out
    assert re.search(r"\n\s+1\s+suppressed\n", out), out
    assert f"summary written to {summary_file}\n" in out
    with open(tmp_path / "r.csv", newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses.count("suppressed") == 1 and statuses.count("accepted") == 7
    code, out, _ = await run_cli("status", "-c", str(path), cwd=tmp_path)
    assert code == 0 and re.search(r"\n\s+1\s+suppressed \(never sent\)\n", out), out
    code, out, _ = await run_cli("runs", "-c", str(path), cwd=tmp_path)
    header, row = out.splitlines()
    assert header.split()[-2:] == ["SUPPRESSED", "LEFT"] and row.split()[-2:] == ["1", "0"]
    # The bounces (5.1.1 and 550 "No such user"), not the policy refusal, are in the store.
    code, out, _ = await run_cli("suppress", "list", "--state-dir", "state", cwd=tmp_path)
    assert code == 0
    assert "gone@example.org" in out and "nouser@example.org" in out
    assert "relay@example.org" not in out and "2 entries in" in out


async def test_not_attempted_is_a_status_of_its_own(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.com\nc@example.com\n")
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.txt",
        group_size=1,
        state_dir="state",
    )
    code, out, err = await run_cli(
        "-c", str(path), "--limit", "1", "--report", "r.csv", cwd=tmp_path
    )
    assert code == 75, err
    assert "3 recipients: 1 accepted, 2 not attempted yet" in out
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["accepted", "not attempted", "not attempted"]
    assert "skipped" not in (tmp_path / "r.csv").read_text()
    [summary_file] = (tmp_path / "state").glob("*.summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["statuses"]["not attempted"] == 2 and summary["statuses"]["skipped"] == 0
    assert summary["finished"] is False
    assert summary["this_send"]["messages"] == len(running.messages) == 1
    code, out, _ = await run_cli("report", "-c", str(path), "--format", "json", cwd=tmp_path)
    assert code == 0
    assert json.loads(out)["counts"]["not attempted"] == 2


# -- asyncmailer suppress -----------------------------------------------------------------


def test_suppress_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert (
        main(["suppress", "add", "Bob@Example.org", "@Blocked.example", "--state-dir", state]) == 0
    )
    assert (
        capsys.readouterr().out
        == f"added 2 entries to {tmp_path / 'state' / 'suppressions.sqlite'}\n"
    )
    assert (
        main(
            ["suppress", "add", "bob@example.org", "--reason", "unsubscribe", "--state-dir", state]
        )
        == 0
    )
    assert "added 0 entries" in (out := capsys.readouterr().out) and "1 already there" in out
    assert main(["suppress", "list", "--state-dir", state]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ENTRY", "REASON", "CODE", "CAMPAIGN", "ADDED", "NOTE"]
    assert lines[1].split()[:2] == ["@blocked.example", "manual"]
    assert lines[2].split()[:2] == ["bob@example.org", "manual"]  # the first reason stays
    assert lines[3].startswith("2 entries in ")
    assert main(["suppress", "list", "--reason", "unsubscribe", "--state-dir", state]) == 0
    assert capsys.readouterr().out.startswith("0 entries in ")
    assert main(["suppress", "remove", "BOB@example.org", "--state-dir", state]) == 0
    assert capsys.readouterr().out == "removed bob@example.org\n"
    assert main(["suppress", "remove", "bob@example.org", "--state-dir", state]) == 1
    assert capsys.readouterr().out == "not in the store: bob@example.org\n"


def test_suppress_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no reliances/config.json here: no default store
    assert main(["suppress", "add", "x@example.org"]) == 2
    assert "which store? name its folder with --state-dir DIR" in capsys.readouterr().err
    assert main(["suppress", "add", "not an address", "--state-dir", "s"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("asyncmailer: ADDRESS: not an address or @domain") and err.count("\n") == 1
    )
    assert main(["suppress", "add", "--state-dir", "s"]) == 2
    assert "name an address or @domain to add" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["suppress", "list", "--reason", "nonsense", "--state-dir", "s"])
    assert usage.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing made for nothing


def test_suppress_import_is_all_or_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")
    bad = tmp_path / "unsubscribed.txt"
    bad.write_text("# exported from the CRM\na@example.org\n\nb at example.org\n")
    assert main(["suppress", "import", str(bad), "--state-dir", state]) == 2
    assert capsys.readouterr().err.startswith(f"asyncmailer: {bad}:4: not an address or @domain")
    assert main(["suppress", "list", "--state-dir", state]) == 0
    assert capsys.readouterr().out.startswith("0 entries")
    bad.write_text("# exported from the CRM\na@example.org\n\nb@example.org  # by phone\n@x.org\n")
    assert (
        main(["suppress", "import", str(bad), "--reason", "unsubscribe", "--state-dir", state]) == 0
    )
    assert capsys.readouterr().out.startswith("added 3 entries")
    assert main(["suppress", "list", "--reason", "unsubscribe", "--state-dir", state]) == 0
    assert "3 entries in" in capsys.readouterr().out


def test_suppress_add_token_verifies_it_with_the_campaign_key(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asyncmailer.unsubscribe import token

    key = b"k" * 32
    (tmp_path / "unsubscribe.key").write_text(key.decode() + "\n")
    (tmp_path / "unsubscribe.key").chmod(0o600)
    path = make_campaign(
        to=None,
        cc=None,
        recipients_file="list.txt",
        campaign="news",
        list_unsubscribe={
            "url": "https://example.com/u?t={{ unsubscribe_token }}",
            "key_file": "unsubscribe.key",
        },
    )
    (tmp_path / "list.txt").write_text("bob@example.org\n")
    good = token("Bob@Example.org", key)
    assert main(["suppress", "add", "--token", good, "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith("added 1 entry to ")
    forged = token("eve@example.org", b"another key" * 3)
    assert main(["suppress", "add", "--token", forged, "--config", str(path)]) == 2
    assert "was not made with this campaign's key" in capsys.readouterr().err
    assert main(["suppress", "list", "--config", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "bob@example.org  unsubscribe" in listed and "news" in listed
    assert "eve@" not in listed


async def test_the_run_says_a_header_of_its_own_makes_one_recipient_per_message(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.csv").write_text("email,segment\na@example.com,vip\nb@example.org,new\n")
    make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.csv",
        personalize=True,
        headers={"X-Campaign": "november-{{ segment }}", "X-Segment": "{{ segment }}"},
    )
    code, _out, err = await run_cli(cwd=tmp_path)
    assert code == 0, err
    assert (
        "asyncmailer: one recipient per message: each carries its own X-Campaign, X-Segment "
        "headers\n"
    ) in err
    headers = [email.message_from_bytes(m.data)["X-Campaign"] for m in running.messages]
    assert sorted(headers) == ["november-new", "november-vip"]


async def test_a_signed_send_verifies_and_the_dkim_key_shows_nowhere(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "reliances").mkdir()
    write_key(tmp_path / "reliances", "ed25519").chmod(0o640)  # a warning, naming the file
    dkim = {"domain": DOMAIN, "selector": SELECTOR, "key_file": "reliances/dkim.pem"}
    path = make_campaign(port=running.server.ssl_port, dkim=dkim)
    code, out, err = await run_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)
    assert code == 0, err
    assert "dkim.pem is readable by other users" in out + err
    [received] = running.messages
    assert verifies(received.data, "ed25519")
    stored = [p.read_bytes() for p in (tmp_path / ".asyncmailer").iterdir() if p.is_file()]
    assert stored  # the journal, and the catalog of runs
    seen = (out + err + (tmp_path / "r.csv").read_text()).encode() + b"".join(stored)
    text = key_text("ed25519")
    assert text[:24].encode() not in seen and text[-24:].encode() not in seen


def test_a_bad_dkim_key_is_one_line_and_exit_2(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "reliances").mkdir()
    key_file = tmp_path / "reliances" / "dkim.pem"
    key_file.write_bytes(pem("rsa-2048")[:-200])  # damaged: its end is missing
    dkim = {"domain": DOMAIN, "selector": SELECTOR, "key_file": "reliances/dkim.pem"}
    path = make_campaign(dkim=dkim)
    assert main(["send", str(path)]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(f"asyncmailer: {path}:") and f"dkim: key_file {key_file}: " in line
    assert "Traceback" not in captured.err and captured.out == ""
    text = key_text("rsa-2048")
    assert not any(text[at : at + 16] in line for at in range(0, len(text) - 16, 8))


@pytest.mark.parametrize(
    ("command", "code", "said"),
    [
        (["no-such-command-here"], 2, "asyncmailer: --: cannot run 'no-such-command-here': "),
        (["sh", "-c", "kill -TERM $$"], 128 + 15, ""),  # as a shell says it, not 241
    ],
)
async def test_serve_says_what_its_command_came_to(
    tmp_path: Path, command: list[str], code: int, said: str
) -> None:
    ports = [str(free_port()), str(free_port())]
    args = ["serve", "--dir", "d", "--ssl-port", ports[0], "--starttls-port", ports[1]]
    status, _out, err = await run_cli(*args, "--", *command, cwd=tmp_path)
    assert status == code, err
    assert said in err and "Traceback" not in err and "internal error" not in err


async def test_a_report_that_cannot_be_written_is_refused_before_a_run_begins(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port)
    missing = tmp_path / "no-such-folder" / "r.csv"
    code, _out, err = await run_cli("send", str(path), "--report", str(missing), cwd=tmp_path)
    assert code == 2
    assert f"{missing}: cannot write the report: no folder {missing.parent}" in err
    assert running.messages == []
    # Nothing was recorded: before, `runs` listed an unfinished run that `status` denied.
    code, out, _err = await run_cli("runs", str(path), cwd=tmp_path)
    assert code == 0 and "has no runs yet" in out
