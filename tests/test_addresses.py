"""Address parsing and validation: nothing is rewritten, everything odd is refused."""

from __future__ import annotations

import pytest

from asyncmailer.addresses import (
    Mailbox,
    check_header_value,
    dedupe,
    parse_address_list,
    parse_mailbox,
    validate_addr_spec,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@example.com", Mailbox("alice@example.com")),
        ("  alice@example.com ", Mailbox("alice@example.com")),
        ("Alice <alice@example.com>", Mailbox("alice@example.com", "Alice")),
        ('"Doe, Jane" <jane@example.com>', Mailbox("jane@example.com", "Doe, Jane")),
        ("Иван <ivan@example.com>", Mailbox("ivan@example.com", "Иван")),
        ("o'brien+tag@sub.example.co.uk", Mailbox("o'brien+tag@sub.example.co.uk")),
        ("user@пример.рф", Mailbox("user@xn--e1afmkfd.xn--p1ai")),
    ],
)
def test_valid_addresses(text: str, expected: Mailbox) -> None:
    assert parse_mailbox(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a@b.com, c@d.com",  # two addresses where one was expected
        "bob@exa mple.com",  # aiosmtplib would silently send to bob@example.com
        "bob@example.com\r\nRCPT TO:<evil@example.com>",
        "no-at-sign.example.com",
        "@example.com",
        "bob@",
        "bob..dot@example.com",
        "bob@-bad-.com",
        "<bob@example.com",
        "Bob <bob@example.com> <eve@example.com>",
        "Bob <bob@example.com>, Eve <eve@example.com>",
        "bob@exam_ple.com",
        "tab\t@example.com",
        "nul\x00@example.com",
        "ивan@example.com",  # non-ASCII local part needs SMTPUTF8, not supported
        "x" * 65 + "@example.com",
    ],
)
def test_invalid_addresses_are_refused_not_rewritten(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mailbox(text)


def test_validate_addr_spec_names_the_problem() -> None:
    with pytest.raises(ValueError, match="spaces or control characters"):
        validate_addr_spec("bob@exa mple.com")
    with pytest.raises(ValueError, match="not of the form name@domain"):
        validate_addr_spec("bob")


def test_address_list_string_and_list_forms() -> None:
    as_string = parse_address_list('alice@example.com, "Doe, J" <j@example.com>, ')
    as_list = parse_address_list(["alice@example.com", '"Doe, J" <j@example.com>'])
    assert (
        as_string
        == as_list
        == [
            Mailbox("alice@example.com"),
            Mailbox("j@example.com", "Doe, J"),
        ]
    )
    assert parse_address_list("") == []
    assert parse_address_list([]) == []


def test_address_list_reports_the_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"bob@exa mple\.com"):
        parse_address_list("alice@example.com, bob@exa mple.com")


def test_dedupe_ignores_case_and_keeps_the_first() -> None:
    boxes = [Mailbox("A@Example.com", "A"), Mailbox("b@example.com"), Mailbox("a@example.com")]
    assert dedupe(boxes) == [Mailbox("A@Example.com", "A"), Mailbox("b@example.com")]


def test_header_value_check() -> None:
    assert check_header_value("plain text, Привет") is None
    assert check_header_value("tab\tis fine") is None
    assert "line break" in (check_header_value("a\r\nBcc: x@example.com") or "")
    assert "line break" in (check_header_value("a\nb") or "")
    assert "control character" in (check_header_value("a\x07b") or "")


def test_mailbox_str_formats_for_headers() -> None:
    assert str(Mailbox("a@example.com")) == "a@example.com"
    assert str(Mailbox("a@example.com", "Doe, J")) == '"Doe, J" <a@example.com>'
