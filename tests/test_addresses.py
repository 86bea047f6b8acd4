"""Address parsing and validation: nothing is rewritten, everything odd is refused."""

from __future__ import annotations

import random
import string

import pytest

from asyncmailer.addresses import (
    Mailbox,
    Mailboxes,
    _checked_addr_spec,
    check_header_value,
    dedupe,
    parse_address_list,
    parse_mailbox,
    plain_address,
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


def _address_like(rng: random.Random) -> str:
    """A string built to sit near every edge the one-match fast path must draw exactly as the
    checks one by one do: atext and what is not, dots, hyphens, label and part lengths at the
    limits, a trailing dot, IDNA, spaces, controls, a second @, angle brackets."""
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
    odd = ' "(),:;<>@[\\]\t\r\n\x00\x7fé.ü-_'

    def word(alphabet: str, longest: int) -> str:
        length = rng.choice([1, 2, 3, 8, 8, 8, longest - 1, longest, longest + 1, 0])
        chars = [rng.choice(alphabet) for _ in range(length)]
        if chars and rng.random() < 0.05:
            chars[rng.randrange(len(chars))] = rng.choice(odd)
        return "".join(chars)

    local = ".".join(word(atext, rng.choice([9, 64, 65])) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.05:
        local = rng.choice(["", ".", "a..b", ".a", "a."]) + local
    ldh = string.ascii_letters + string.digits + "-"
    labels = [word(ldh, rng.choice([9, 63, 64])) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.05:
        labels.append(rng.choice(["пример", "xn--e1afmkfd", "рф", "", "-a", "a-"]))
    domain = ".".join(labels) + rng.choice(["", "", "", ".", ".."])
    text = local + rng.choice(["@"] * 20 + ["", "@@", " @", "@ "]) + domain
    if rng.random() < 0.05:  # long ones, at and around 254 characters
        text = (
            "a" * rng.randint(0, 64)
            + "@"
            + ".".join(["b" * 63] * 3)
            + "."
            + "c" * rng.randint(0, 70)
        )
    return text


def test_the_fast_path_accepts_only_what_the_checks_accept_and_gives_the_same() -> None:
    # A property test: for 30,000 seeded strings near the edges, whatever the one-match fast
    # path (most list lines) takes, the checks one by one take too, as the same address; it
    # may leave a valid address to the checks (slower, same result), never take a bad one.
    rng = random.Random(20241201)
    taken = refused_by_both = 0
    for _ in range(30_000):
        text = _address_like(rng)
        plain = plain_address(text)
        try:
            checked = _checked_addr_spec(text)
        except ValueError:
            assert plain is None, text
            refused_by_both += 1
            continue
        if plain is not None:
            assert plain == checked, text
            assert parse_mailbox(text) == Mailbox(checked)
            assert check_header_value(text) is None and "<" not in text, text
            taken += 1
    assert taken > 5_000 and refused_by_both > 5_000  # both sides well covered


def test_mailboxes_are_columns_made_into_mailboxes_when_looked_at() -> None:
    boxes = [Mailbox("a@example.com", "A"), Mailbox("b@example.com")]
    columns = Mailboxes.of(boxes)
    assert (columns.addrs, columns.names) == (["a@example.com", "b@example.com"], ["A", ""])
    assert list(columns) == boxes and columns[1] == boxes[1] and len(columns) == 2
    assert list(columns[1:]) == boxes[1:] and Mailboxes.of(columns) is columns
    assert list(Mailboxes(["c@example.com"])) == [Mailbox("c@example.com")]


def test_domains_go_as_idna_2008_not_rewritten_to_another_domain() -> None:
    assert parse_mailbox("user@straße.de").addr == "user@xn--strae-oqa.de"  # not strasse.de
    assert parse_mailbox("User@Straße.de").key == parse_mailbox("user@xn--strae-oqa.de").key


@pytest.mark.parametrize(
    "text",
    [
        "user@exa\u200bmple.com",  # a zero-width space: UTS 46 would drop it silently
        "user@exam\u00adple.com",  # a soft hyphen
        "Ann\u202e <ann@example.com>",  # a right-to-left override in the name
        "\u200bAnn <ann@example.com>",
        "Ann\u2028Lee <ann@example.com>",  # a line separator
        "An\x85n <ann@example.com>",  # NEL, a C1 control
    ],
)
def test_invisible_and_control_characters_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"invisible|control"):
        parse_mailbox(text)
