"""XOAUTH2 (`auth: xoauth2`, smtp/oauth.py): the token from a file or a command, fetched
again when the server says it expired; never in the output, the report or the journal."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from asyncmailer.config import AuthMethod, Security, ServerSettings, load_campaign
from asyncmailer.errors import AuthError
from asyncmailer.run.campaign import run_campaign
from asyncmailer.smtp.oauth import TokenSource

from ..conftest import USER, CampaignFactory, ServerFactory
from ..smtpd import OAuthStore

# Prints "expired-1" the first time it runs, "fresh-2" the next, counting in the file named.
COUNTING = (
    "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1; "
    "p.write_text(str(n)); print(('expired', 'fresh')[min(n, 2) - 1] + '-' + str(n))"
)


def token_settings(tmp_path: Path, **keys: object) -> ServerSettings:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 465,
        "security": Security.SSL,
        "username": USER,
        "password": None,
        "auth": AuthMethod.XOAUTH2,
        "connect_timeout": 5.0,
        **keys,
    }
    return ServerSettings(**fields)  # type: ignore[arg-type]


async def test_an_expired_token_is_fetched_again_and_the_campaign_goes_out(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    store = OAuthStore(user=USER, valid={"fresh-2"})
    running = await smtp_server(store=store)
    counter = tmp_path / "runs"
    counter.write_text("")
    path = make_campaign(
        port=running.server.ssl_port,
        password=None,
        auth="xoauth2",
        token_command=[sys.executable, "-c", COUNTING, str(counter)],
        concurrency=1,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.fatal is None and report.all_accepted
    assert store.tokens == ["expired-1", "fresh-2"]  # refused once, then the new one
    assert counter.read_text() == "2"  # the command ran again, once
    assert running.messages[0].rcpt_tos == (
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
    )
    assert report.journal is not None
    assert b"expired-1" not in report.journal.read_bytes()


async def test_a_refused_token_stops_the_run_without_showing_it(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    store = OAuthStore(user=USER, valid=set())
    running = await smtp_server(store=store)
    token = tmp_path / "token.txt"
    token.write_text("ya29.secret-token\n")
    token.chmod(0o600)
    path = make_campaign(
        port=running.server.ssl_port, password=None, auth="xoauth2", token_file=str(token)
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert isinstance(report.fatal, AuthError)
    text = str(report.fatal)
    assert "535" in text and "********" in text  # the server echoed it: scrubbed
    assert "ya29.secret-token" not in text
    encoded = base64.b64encode(f"user={USER}\x01auth=Bearer ya29.secret-token\x01\x01".encode())
    assert encoded.decode() not in text
    # The file was read again after the refusal, found unchanged: not tried twice.
    assert store.tokens == ["ya29.secret-token"]
    assert running.messages == []


async def test_a_failing_token_command_is_one_line_without_its_output(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "print('ya29.leaked'); raise SystemExit(3)"]
    source = TokenSource(token_settings(tmp_path, token_command=tuple(failing)))
    with pytest.raises(AuthError) as failed:
        await source.token()
    assert "exited with 3" in str(failed.value) and "ya29" not in str(failed.value)
    assert "ya29" not in repr(source)
    assert "ya29" not in repr(token_settings(tmp_path, token_command=tuple(failing)))


async def test_a_token_file_that_is_not_a_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token.txt"
    token.write_text("two words\n")
    source = TokenSource(token_settings(tmp_path, token_file=token))
    with pytest.raises(AuthError, match="not a bearer token"):
        await source.token()
    token.write_text("")
    with pytest.raises(AuthError, match="is empty"):
        await TokenSource(token_settings(tmp_path, token_file=token)).token()


async def test_xoauth2_where_the_server_does_not_offer_it(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()  # LOGIN and PLAIN only
    token = tmp_path / "token.txt"
    token.write_text("ya29.x\n")
    path = make_campaign(
        port=running.server.ssl_port, password=None, auth="xoauth2", token_file=str(token)
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert isinstance(report.fatal, AuthError)
    assert "offers no AUTH XOAUTH2 (offers: LOGIN, PLAIN)" in str(report.fatal)
