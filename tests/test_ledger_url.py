"""The shared ledger's URL: checked, and its password masked wherever it is shown."""

from __future__ import annotations

import pytest

from asyncmailer.ledger_url import LedgerUrl


def test_the_password_is_masked_in_every_form_it_is_shown() -> None:
    url = LedgerUrl("postgresql://mailer:s%40cret@db.internal:5433/mail?sslmode=require")
    assert url.reveal().startswith("postgresql://mailer:s%40cret@")
    for shown in (url.masked, str(url), repr(url), f"{url}"):
        assert "s%40cret" not in shown and "s@cret" not in shown
        assert "mailer:********@db.internal:5433/mail" in shown
    # Any text that might repeat it (a driver's error) is scrubbed, decoded or not.
    assert url.scrub("login s@cret refused; was s%40cret") == "login ******** refused; was ********"
    query = LedgerUrl("postgres://db/mail?user=m&password=hunter2")
    assert "hunter2" not in query.masked and "password=********" in query.masked
    assert LedgerUrl("postgresql:///mail").masked == "postgresql:///mail"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mysql://db/mail", "expected a postgresql://"),
        ("db.internal:5432", "expected a postgresql://"),
        ("postgresql://db:port/mail", "not a URL"),
        ("postgresql://db/mail\r\nX: 1", "a line break or NUL"),
    ],
)
def test_anything_else_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        LedgerUrl(text)
