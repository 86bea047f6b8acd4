"""Recipient list files: CSV and plain text, streamed; bad rows named by line; duplicates once."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.errors import InputError
from asyncmailer.recipient_list import BadRow, Recipient, RecipientFile


async def collect(path: Path, **kw: str) -> tuple[list[Recipient], list[BadRow], RecipientFile]:
    source = RecipientFile(path, **kw)
    good: list[Recipient] = []
    bad: list[BadRow] = []
    async for item in source:
        (bad if isinstance(item, BadRow) else good).append(item)  # type: ignore[arg-type]
    return good, bad, source


async def test_csv_with_header_fields_names_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        "\ufeffName,Email,City\n"
        "Алиса,alice@example.com,Москва\n"
        '"Doe, Bob",bob@example.org,"New\nYork"\n'
        ",carol@example.net,\n".encode()
    )
    good, bad, _ = await collect(path)
    assert bad == []
    assert [(r.mailbox.addr, r.mailbox.name, r.line) for r in good] == [
        ("alice@example.com", "Алиса", 2),
        ("bob@example.org", "Doe, Bob", 3),
        ("carol@example.net", "", 5),  # the quoted newline made row 3 two lines long
    ]
    assert good[1].fields == {"Name": "Doe, Bob", "Email": "bob@example.org", "City": "New\nYork"}


async def test_configurable_column(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("id,mail\n1,a@example.com\n")
    good, _, _ = await collect(path, column="mail")
    assert [r.mailbox.addr for r in good] == ["a@example.com"]
    with pytest.raises(InputError) as caught:
        await collect(path)
    assert str(caught.value) == (
        f"{path}:1: no 'email' column in the header (columns: 'id', 'mail'); set recipients_column"
    )


async def test_text_list_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# customers\na@example.com\n\n  B <b@example.com>  \r\nc@example.com")
    good, bad, _ = await collect(path)
    assert [(r.mailbox.addr, r.line) for r in good] == [
        ("a@example.com", 2),
        ("b@example.com", 4),
        ("c@example.com", 5),
    ]
    assert bad == []


async def test_bad_rows_are_named_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name\n"
        "ok@example.com,Ok\n"
        "bob@exa mple.com,Bob\n"
        "x@example.com, y@example.com,Two\n"
        "not-an-address,\n"
        "fine@example.com,Fine\n"
        'two@example.com,"Line\nBreak"\n'
        'slash@example.com,Back\\Slash "Q"\n'
    )
    good, bad, source = await collect(path)
    assert [(r.mailbox.addr, r.mailbox.name) for r in good] == [
        ("ok@example.com", "Ok"),
        ("fine@example.com", "Fine"),
        ("slash@example.com", 'Back\\Slash "Q"'),  # kept as written, quoted in headers
    ]
    assert [str(b) for b in bad] == [
        f"{path}:3: email: 'bob@exa mple.com' contains spaces or control characters",
        f"{path}:4: expected 2 columns, found 3",
        f"{path}:5: email: 'not-an-address' is not of the form name@domain",
        f"{path}:7: name: 'Line\\nBreak' contains a line break (CR/LF), which could inject headers",
    ]
    assert source.bad_rows == 4
    assert str(good[2].mailbox) == '"Back\\\\Slash \\"Q\\"" <slash@example.com>'


async def test_scan_rejects_non_utf8_and_nul_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"a@example.com\nb@example.com\n" + "в@example.com".encode("cp1251"))
    with pytest.raises(InputError, match=rf"^{path}:3: not valid UTF-8"):
        await RecipientFile(path).scan()
    path.write_bytes(b"a@example.com\n\x00\n")
    with pytest.raises(InputError, match=rf"^{path}:2: contains a NUL byte"):
        await RecipientFile(path).scan()
    path.write_bytes(b"a@example.com\nb@example.com\n")
    await RecipientFile(path).scan()  # a file that ends in a whole character passes


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the recipient list"):
        await RecipientFile(tmp_path / "none.csv").scan()


async def test_streaming_memory_does_not_grow_with_the_list(tmp_path: Path) -> None:
    """Reading 60,000 rows holds a batch at a time, whatever the list's length."""
    path = tmp_path / "big.txt"
    path.write_text("".join(f"user{i}@example.com\n" for i in range(60_000)))
    tracemalloc.start()
    try:
        count = 0
        async for _ in RecipientFile(path):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 60_000
    # The addresses alone, kept as strings, would take ~4.5 MB.
    assert peak < 2 * 1024 * 1024, peak


async def test_a_list_changed_while_it_is_read_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("".join(f"u{i}@example.com\n" for i in range(5000)))
    source = RecipientFile(path)
    await source.scan()
    read = 0
    with pytest.raises(InputError) as caught:
        async for _ in source:
            read += 1
            if read == 1:  # the first batch is in memory; the rest is read later
                with path.open("ab") as handle:
                    handle.write(b"caf\xe9@example.com\n")
    # Text is decoded a block at a time: the batch that met the bad bytes is not given out
    # (the run stops; the next one reads those rows again); the error names its first line.
    assert read == 4000
    assert str(caught.value) == (
        f"{path}:4001: not valid UTF-8 text from here on any more: was the list changed while "
        "it was read?"
    )


async def test_batches_are_columns_in_the_files_order(tmp_path: Path) -> None:
    # What the loader reads: 2,000 rows a batch (blanks and comments not counted), the good
    # ones as columns, each bad one placed by the good rows before it.
    path = tmp_path / "list.txt"
    lines = ["# a list", ""]
    for n in range(4100):
        lines.append(f"user{n}@example.com" if n % 1000 != 7 else f"bad{n}@exa mple.com")
        if n % 500 == 0:
            lines.append("   ")
    lines.insert(1234, "Named <named@example.com>")
    path.write_text("\n".join(lines) + "\n")
    source = RecipientFile(path)
    batches = [batch async for batch in source.batches()]
    assert [len(b) for b in batches] == [2000, 2000, 101]
    assert all(b.fields is None for b in batches)  # a text list has no fields to keep
    items = [item for batch in batches for item in batch.items()]
    assert items == [item async for item in RecipientFile(path)]
    for batch in batches:  # each bad row sits between the good rows around it
        for before, row in batch.bad:
            assert batch.lines[before - 1] < row.line < batch.lines[before]
    assert [len(b.bad) for b in batches] == [2, 2, 1] and source.bad_rows == 5
    assert Mailbox("named@example.com", "Named") in batches[0].mailboxes


async def test_csv_batches_keep_fields_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,name,city\na@example.com,A,Paris\n\nB <b@example.com>,X,Rome\n")
    (kept,) = [batch async for batch in RecipientFile(path).batches()]
    (bare,) = [batch async for batch in RecipientFile(path).batches(fields=False)]
    assert kept.fields == [
        {"email": "a@example.com", "name": "A", "city": "Paris"},
        {"email": "B <b@example.com>", "name": "X", "city": "Rome"},
    ]
    assert bare.fields is None and bare.lines == kept.lines == [2, 4]
    # The address's own display name wins over the name column, as before.
    assert list(bare.mailboxes) == [Mailbox("a@example.com", "A"), Mailbox("b@example.com", "B")]


async def test_an_oversized_csv_field_is_one_bad_row_and_the_list_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,name\na@example.com,A\n" + "x" * 200_000 + ",B\nc@example.com,C\n")
    recipients, bad, _ = await collect(path)
    good = [r.mailbox.addr for r in recipients]
    assert good == ["a@example.com", "c@example.com"]
    assert [b.line for b in bad] == [3] and "field larger than field limit" in bad[0].reason


async def test_a_huge_garbage_line_is_one_short_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    with path.open("w") as handle:
        handle.write("a@example.com\n" + "g" * 10_000_000 + "\nb@example.com\n")
    recipients, [bad], _ = await collect(path)
    good = [r.mailbox.addr for r in recipients]
    assert good == ["a@example.com", "b@example.com"]
    assert bad.line == 2 and "longer than 65,536 characters" in bad.reason
    assert len(bad.text) < 300 and len(str(bad)) < 500
