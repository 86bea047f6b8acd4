"""The suppression file and the matching rule: keys as Mailbox.key makes them, file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncmailer.addresses import Mailbox, parse_mailbox
from asyncmailer.errors import InputError
from asyncmailer.suppression import (
    Suppression,
    entry_key,
    parse_suppression,
    read_suppression_file,
)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Bob@Example.ORG", "bob@example.org"),
        ("  Bob Smith <bob@example.org>  ", "bob@example.org"),
        ("@Example.ORG", "@example.org"),
        ("@bücher.de", "@xn--bcher-kva.de"),
        ("@BÜCHER.de.", "@xn--bcher-kva.de"),
        ("anna@bücher.de", "anna@xn--bcher-kva.de"),
        ("a#b@example.org", "a#b@example.org"),
    ],
)
def test_an_entry_is_keyed_as_a_mailbox_is(text: str, key: str) -> None:
    assert entry_key(text) == key


def test_an_address_key_is_the_mailbox_key_of_the_same_address() -> None:
    # The list's row and the entry meet on one key, whatever case or script each is in.
    assert entry_key("ANNA@BÜCHER.DE") == parse_mailbox("anna@bücher.de").key


@pytest.mark.parametrize("text", ["@", "@a@b.org", "not an address", "@exa mple.org", "@-x.org"])
def test_a_bad_entry_says_why(text: str) -> None:
    with pytest.raises(ValueError):
        entry_key(text)


def test_matching_by_address_and_by_whole_domain() -> None:
    suppression = parse_suppression(
        "# who never gets mail\n"
        "\n"
        "bob@example.org   # asked on the phone\n"
        "@blocked.example\n"
        "a#b@example.org\n",
        "/lists/suppressed.txt",
    )
    assert len(suppression) == 3
    assert Mailbox("BOB@example.org") in suppression
    assert suppression.why(Mailbox("bob@example.org")) == "suppressed: suppressed.txt line 3"
    assert suppression.matches("anyone@BLOCKED.example")
    assert suppression.why("x@blocked.example") == "suppressed: suppressed.txt line 4"
    assert Mailbox("a#b@example.org") in suppression  # "#" in a local part is no comment
    # A whole domain is that domain: not its subdomains, not a longer name.
    assert Mailbox("x@sub.blocked.example") not in suppression
    assert Mailbox("x@notblocked.example") not in suppression
    assert Mailbox("alice@example.org") not in suppression
    assert 42 not in suppression


def test_joined_suppressions_keep_the_first_note() -> None:
    file = Suppression({"bob@example.org": "from the file"})
    store = Suppression({"bob@example.org": "from the store", "@x.org": "domain"})
    joined = file | store
    assert joined.why("bob@example.org") == "from the file"
    assert joined.why("y@x.org") == "domain"
    assert sorted(joined) == ["@x.org", "bob@example.org"]
    assert "1 addresses, 1 domains" in repr(joined)


async def test_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "suppressed.txt"
    path.write_text("ok@example.org\n# fine\nbob at example.org\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        await read_suppression_file(path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert "not an address or @domain" in str(caught.value)


async def test_the_file_is_read_as_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "suppressed.txt"
    path.write_bytes(b"\xef\xbb\xbf@b\xc3\xbccher.de\r\nbob@example.org\r\n")  # BOM, CRLF
    suppression = await read_suppression_file(path)
    assert sorted(suppression) == ["@xn--bcher-kva.de", "bob@example.org"]
    path.write_bytes(b"bob@example.org\n\xff\n")
    with pytest.raises(InputError, match=r":2: .*UTF-8"):
        await read_suppression_file(path)
