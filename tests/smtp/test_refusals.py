"""Which refusals say an address does not exist, for good (what the suppression store keeps)."""

from __future__ import annotations

import pytest

from asyncmailer.smtp.refusals import address_gone


@pytest.mark.parametrize(
    ("code", "text", "gone"),
    [
        (550, "5.1.1 <x@example.org>: Recipient address rejected: User unknown", "550 5.1.1"),
        (550, "5.1.1 The email account that you tried to reach does not exist", "550 5.1.1"),
        (554, "5.1.2 Bad destination system address", "554 5.1.2"),
        (556, "5.1.10 Recipient address has null MX", "556 5.1.10"),
        (550, "User unknown", "550"),
        (550, "No such user here", "550"),
        (550, "mailbox not found", "550"),
        (550, "<x@example.org>... User unknown in virtual mailbox table", "550"),
    ],
)
def test_permanent_address_failures(code: int, text: str, gone: str) -> None:
    assert address_gone(code, text) == gone


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.7.1 Relaying denied"),  # policy: not a fact about the address
        (554, "5.7.1 <me@example.com>: Sender address rejected: Access denied"),
        (550, "5.4.5 Daily user sending limit exceeded"),  # the sender's quota
        (552, "5.2.2 Mailbox full"),
        (450, "4.1.1 User unknown (try later)"),  # temporary
        (451, "User unknown"),
        (550, "Requested action not taken: mailbox unavailable"),  # also said for blocks
        (553, "User unknown"),  # 550 alone without an enhanced code
        (550, "4.1.1 User unknown"),  # an enhanced code of another class
        (550, "5.1.3 Bad destination mailbox address syntax"),
        (None, "5.1.1 User unknown"),  # no reply code: the connection was lost
    ],
)
def test_not_address_failures(code: int | None, text: str) -> None:
    assert address_gone(code, text) is None
