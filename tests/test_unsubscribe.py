"""One-click unsubscribe and extra headers: every message carries its recipient's own
List-Unsubscribe link, whose token the endpoint can verify with the key alone."""

from __future__ import annotations

import email
import re
from email import policy
from pathlib import Path

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import ConfigError
from asyncmailer.run.campaign import run_campaign
from asyncmailer.unsubscribe import ListUnsubscribe, token, verify

from .conftest import CampaignFactory, ServerFactory

KEY = b"0123456789abcdef-campaign-key"


def test_a_token_verifies_to_its_address_and_nothing_else() -> None:
    made = token("Ann@Example.org", KEY)
    assert verify(made, KEY) == "ann@example.org"
    assert verify(made, b"another key of enough length") is None
    _, signature = made.split(".")
    forged = token("bob@example.org", KEY).split(".")[0] + "." + signature
    assert verify(forged, KEY) is None
    assert verify("not a token", KEY) is None


def test_the_header_has_the_link_the_mailto_and_one_click() -> None:
    links = ListUnsubscribe(
        url="https://example.com/u?e={{ email }}&t={{ unsubscribe_token }}",
        mailto="leave@example.com",
        key=KEY,
    )
    header = links.header("ann+news@example.org").decode("ascii")
    signed = token("ann+news@example.org", KEY)
    assert header == (
        f"List-Unsubscribe: <https://example.com/u?e=ann%2Bnews@example.org&t={signed}>,\r\n"
        f" <mailto:leave@example.com?subject=unsubscribe%20{signed}>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )


async def test_every_message_carries_its_recipients_link_and_the_extra_headers(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.org\nc@example.net\n")
    (tmp_path / "reliances" / "unsubscribe.key").parent.mkdir(exist_ok=True)
    key_file = tmp_path / "unsubscribe.key"
    key_file.write_text(KEY.decode() + "\n")
    key_file.chmod(0o600)
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.txt",
        reply_to="Support <support@example.com>",
        headers={"X-Campaign": "november", "Precedence": "bulk"},
        list_unsubscribe={
            "url": "https://example.com/unsubscribe?t={{ unsubscribe_token }}",
            "key_file": "unsubscribe.key",
        },
    )
    campaign = await load_campaign(path, env={})
    assert campaign.group_size == 1  # a link of its own per recipient: a message each
    report = await run_campaign(campaign)
    assert report.all_accepted
    assert len(running.messages) == 3
    for received in running.messages:
        [rcpt] = received.rcpt_tos
        message = email.message_from_bytes(received.data, policy=policy.default)
        assert message["Reply-To"] == "Support <support@example.com>"
        assert message["X-Campaign"] == "november" and message["Precedence"] == "bulk"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        found = re.fullmatch(
            r"<https://example.com/unsubscribe\?t=(\S+)>", message["List-Unsubscribe"]
        )
        assert found is not None
        assert verify(found[1], KEY) == rcpt


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ({"headers": {"From": "x@example.com"}}, "From: asyncmailer writes this header itself"),
        ({"headers": {"Content-Type": "text/html"}}, "writes this header itself"),
        ({"headers": {"Bad Name": "x"}}, "is not a header name"),
        ({"headers": {"X-A": "one\r\nBcc: evil@example.com"}}, "X-A: contains a line break"),
        ({"list_unsubscribe": {"url": "http://example.com/u"}}, "expected an https:// URL"),
        (
            {"list_unsubscribe": {"url": "https://example.com/u?t={{ unsubscribe_token }}"}},
            "needs a key of 16 characters or more",
        ),
        ({"list_unsubscribe": {"mailto": "not an address"}}, "mailto:"),
        (
            {"list_unsubscribe": {"url": "https://example.com/" + "u" * 400}},
            "url: 420 characters; at most 300",
        ),
        ({"headers": {"X-A": "x" * 1200}}, "X-A: has a word of 1200 characters"),
        ({"subject": "y" * 1000}, "subject: has a word of 1000 characters"),
    ],
)
async def test_bad_headers_and_links_are_one_clear_line(
    make_campaign: CampaignFactory, keys: dict[str, object], reason: str
) -> None:
    path = make_campaign(to=None, cc=None, recipients_file="list.txt", **keys)
    (path.parent.parent / "list.txt").write_text("a@example.com\n")
    with pytest.raises(ConfigError) as caught:
        await load_campaign(path, env={})
    assert reason in str(caught.value) and "\n" not in str(caught.value)
