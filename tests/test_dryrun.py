"""`send --dry-run DIR`: every message that would go out, as .eml files that parse, with their
envelopes; nothing reaches a server and the campaign's journal is not touched."""

from __future__ import annotations

import asyncio
import email
import json
from email import policy
from pathlib import Path

import pytest

from asyncmailer.attachments import SPOOL_ABOVE
from asyncmailer.cli import _preview, main
from asyncmailer.dryrun import ENVELOPES

from .conftest import SUBJECT, CampaignFactory, ServerFactory, list_campaign, run_cli
from .dkimkeys import DOMAIN, SELECTOR, key_text, verifies, write_key


def written(folder: Path) -> list[tuple[dict[str, object], email.message.EmailMessage]]:
    """Each envelope line with the message its file holds, parsed."""
    entries = [json.loads(line) for line in (folder / ENVELOPES).read_text().splitlines()]
    return [
        (
            entry,
            email.message_from_bytes(
                (folder / str(entry["file"])).read_bytes(), policy=policy.default
            ),
        )
        for entry in entries
    ]


async def test_a_dry_run_writes_every_message_and_sends_nothing(
    smtp_server: ServerFactory,
    make_campaign: CampaignFactory,
    tmp_path: Path,
) -> None:
    running = await smtp_server()
    addresses = [f"u{i}@example.com" for i in range(25)]
    path = list_campaign(
        make_campaign,
        running.server.ssl_port,
        addresses,
        group_size=10,
        files={"report.txt": b"sixteen bytes..\n"},
    )
    out = tmp_path / "preview"

    code, shown, err = await run_cli("send", str(path), "--dry-run", str(out), cwd=tmp_path)
    assert code == 0, err

    messages = written(out)
    groups = [list(map(str, entry["rcpt_to"])) for entry, _ in messages]  # type: ignore[call-overload]
    assert sorted(map(len, groups)) == [5, 10, 10]
    assert sorted(r for group in groups for r in group) == sorted(addresses)  # each once
    for entry, message in messages:
        assert entry["mail_from"] == "sender@example.com"
        assert message["To"] == "undisclosed-recipients:;"
        assert message["Message-ID"]
        body = message.get_body(("plain",))
        assert body is not None
        # The file holds the bytes that would go out: CRLF line ends, as on the wire.
        assert body.get_content() == "Hello!\r\nПривет!\r\n"
    assert f"dry run: 3 messages to 25 recipients written to {out}/" in shown
    # The first message as a person reads it: headers decoded, its text, its attachment.
    first = shown[shown.index(f"--- {out / '000001.eml'} ---") :].splitlines()
    group = len(messages[0][0]["rcpt_to"])  # type: ignore[arg-type]
    assert first[1].startswith(f"Envelope: from sender@example.com to {group} recipients (u")
    assert f"Subject: {SUBJECT.strip()}" in first and "Привет!" in first
    assert first[-3:] == [
        "Other parts:",
        "  attachment report.txt (text/plain, 16 bytes)",
        f"--- (the whole message: {out / '000001.eml'}) ---",
    ]
    assert "(25 written)" in err  # the progress line: no server accepted anything
    assert running.messages == []  # no connection carried a message
    assert not (tmp_path / ".asyncmailer").exists()  # the campaign's journal was never made


async def test_limit_stops_a_dry_run_and_a_real_one_after_n_messages(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    addresses = [f"u{i}@example.com" for i in range(7)]
    path = list_campaign(make_campaign, running.server.ssl_port, addresses, group_size=1)

    dry = ("--dry-run", str(tmp_path / "d"), "--limit", "2")
    assert (await run_cli("send", str(path), *dry, cwd=tmp_path))[0] == 0
    assert len(written(tmp_path / "d")) == 2

    # A real run stops after 2 messages (exit 75: run again to go on); the next sends the rest.
    code, _, err = await run_cli("send", str(path), "--limit", "2", "-q", cwd=tmp_path)
    assert code == 75 and "stopped after 2 messages (--limit)" in err
    assert len(running.messages) == 2
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    delivered = sorted(r for m in running.messages for r in m.rcpt_tos)
    assert delivered == sorted(addresses)  # each once


async def test_limit_with_a_slow_rate_ends_after_the_nth_message(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """Each of the 4 connections reserves its slot of the rate (one a minute) before it may
    start: the run must end after its one message, not when the last reserved slot comes
    (three minutes on)."""
    running = await smtp_server()
    addresses = [f"u{i}@example.com" for i in range(8)]
    path = list_campaign(
        make_campaign, running.server.ssl_port, addresses, group_size=1, concurrency=4,
        rate="1/minute",
    )  # fmt: skip
    code, _, err = await asyncio.wait_for(
        run_cli("send", str(path), "--limit", "1", "-q", cwd=tmp_path), 60
    )
    assert code == 75 and "stopped after 1 message (--limit)" in err, err
    assert len(running.messages) == 1


def test_a_dry_run_refuses_a_folder_of_an_earlier_one(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_campaign()
    out = tmp_path / "preview"
    assert main(["send", str(path), "--dry-run", str(out), "-q"]) == 0
    assert main(["send", str(path), "--dry-run", str(out), "-q"]) == 2
    assert "already holds messages of an earlier dry run" in capsys.readouterr().err


async def test_a_dry_run_leaves_suppressed_recipients_out_and_writes_no_state(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    addresses = ["u0@example.com", "u1@example.com", "gone@blocked.example", "u2@example.com"]
    (tmp_path / "suppressed.txt").write_text("@blocked.example\n")
    path = list_campaign(
        make_campaign, running.server.ssl_port, addresses, suppression_file="suppressed.txt"
    )
    out = tmp_path / "preview"
    code, shown, err = await run_cli("send", str(path), "--dry-run", str(out), cwd=tmp_path)
    assert code == 0, err

    [(entry, _)] = written(out)
    assert entry["rcpt_to"] == ["u0@example.com", "u1@example.com", "u2@example.com"]
    assert "1 recipient suppressed" in shown
    assert "gone@blocked.example" not in (out / ENVELOPES).read_text()
    assert not (tmp_path / ".asyncmailer").exists()  # no journal, no store, no summary file


def test_a_bad_suppression_line_stops_before_a_run_is_recorded(
    make_campaign: CampaignFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "suppressed.txt").write_text("ok@example.org\nnot an address\n")
    path = make_campaign(suppression_file="suppressed.txt")
    assert main(["send", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"asyncmailer: {tmp_path / 'suppressed.txt'}:2: not an address or @domain: "
        "'not an address' contains spaces or control characters (one a line; # starts a "
        "comment)\n"
    )
    assert not (tmp_path / ".asyncmailer").exists()  # no run began


async def test_a_signed_dry_run_writes_messages_that_verify(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    (tmp_path / "reliances").mkdir()
    write_key(tmp_path / "reliances", "rsa-2048")
    big = bytes(range(256)) * (SPOOL_ABOVE // 256 + 1024)  # spooled, copied into each file
    path = list_campaign(
        make_campaign,
        2465,  # nothing is sent: no server needed
        [f"u{i}@example.com" for i in range(5)],
        group_size=2,
        files={"big.bin": big},
        dkim={"domain": DOMAIN, "selector": SELECTOR, "key_file": "reliances/dkim.pem"},
    )
    out = tmp_path / "preview"
    code, shown, err = await run_cli("send", str(path), "--dry-run", str(out), cwd=tmp_path)
    assert code == 0, err
    files = sorted(out.glob("*.eml"))
    assert len(files) == 3
    for file in files:
        data = file.read_bytes()
        assert data.startswith(b"DKIM-Signature: ") and verifies(data, "rsa-2048")
    tampered = files[0].read_bytes().replace(b"big.bin", b"big.exe")
    assert tampered != files[0].read_bytes() and not verifies(tampered, "rsa-2048")
    assert key_text("rsa-2048")[:40] not in shown + err


def test_a_message_the_email_package_cannot_read_is_shown_as_written(tmp_path: Path) -> None:
    """The preview never stops a dry run that wrote its files: the email package raises on
    some headers (an unknown charset, a malformed address); the lines are shown as they are."""
    path = tmp_path / "000001.eml"
    path.write_bytes(b'To: "a" <@\r\nSubject: s\x1b\r\n\r\nbody\r\n')
    assert _preview(path, None) == ['To: "a" <@', "Subject: s\\x1b", "", "body"]
