"""Recipient list files: CSV and plain text, streamed; bad rows named by line; duplicates once."""

from __future__ import annotations

import re
import tracemalloc
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.config import load_campaign
from asyncmailer.errors import InputError
from asyncmailer.recipient_list import BadRow, Recipient, RecipientFile, sniff_delimiter
from asyncmailer.results import Status
from asyncmailer.run.campaign import run_campaign

from .conftest import CampaignFactory, RunningServer, ServerFactory


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


# Lists as people have them: encodings, delimiters, short rows (issue 13, item 6).


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("email,name,city", ","),
        ("email;name;city", ";"),
        ("email\tname\tcity", "\t"),
        ("email|name|city", "|"),
        ('"e;mail,x";"na,me";city', ";"),  # the ones inside quotes do not count
        ("email;name,city", ","),  # a tie goes to the first of , ; tab |
        ("email", ","),  # one column: nothing to sniff
        ("email;name;", ";"),  # a trailing empty column
    ],
)
def test_the_delimiter_is_the_one_the_header_uses_most(header: str, delimiter: str) -> None:
    assert sniff_delimiter(header + "\r\n") == delimiter


async def test_a_sniffed_semicolon_list_with_commas_in_its_cells(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email;name;amount\na@example.com;Doe, Ann;3,50\n")
    [good], bad, source = await collect(path)
    assert bad == [] and source.columns == ("email", "name", "amount")
    assert good.mailbox == Mailbox("a@example.com", "Doe, Ann")
    assert good.fields == {"email": "a@example.com", "name": "Doe, Ann", "amount": "3,50"}


async def test_a_given_delimiter_wins_over_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email|name,first\na@example.com|Ann,A\n")
    with pytest.raises(InputError, match=re.escape("columns: 'email|name', 'first'")):
        await collect(path)  # sniffed: "," (one of each: the tie goes to ",")
    source = RecipientFile(path, column="email", delimiter="|")
    [row] = [item async for item in source]
    assert isinstance(row, Recipient)
    assert row.fields == {"email": "a@example.com", "name,first": "Ann,A"}


async def test_short_rows_are_filled_and_long_ones_refused_unless_empty(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,city,\n"  # a trailing empty column in the header
        "a@example.com,Ann\n"  # two cells short
        "b@example.com,Bob,Oslo,,,\n"  # longer, but only by empty cells
        "c@example.com,Cid,Rome,x,y\n"  # longer with values: refused
        "d@example.com\n"
    )
    good, bad, _ = await collect(path)
    assert [(r.mailbox.addr, r.mailbox.name, r.line) for r in good] == [
        ("a@example.com", "Ann", 2),
        ("b@example.com", "Bob", 3),
        ("d@example.com", "", 5),
    ]
    assert good[0].fields == {"email": "a@example.com", "name": "Ann", "city": "", "": ""}
    assert good[1].fields == {"email": "b@example.com", "name": "Bob", "city": "Oslo", "": ""}
    assert [str(b) for b in bad] == [f"{path}:4: expected 4 columns, found 5"]


async def test_a_cp1251_list(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes("email;name;город\nann@example.com;Аня;Москва\n".encode("cp1251"))
    source = RecipientFile(path, encoding="cp1251")
    await source.scan()
    [good] = [item async for item in source]
    assert isinstance(good, Recipient) and source.columns == ("email", "name", "город")
    assert good.mailbox == Mailbox("ann@example.com", "Аня")
    assert good.fields["город"] == "Москва"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
async def test_utf16_lists_with_a_bom(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "list.csv"
    text = "email\tname\r\nann@example.com\tАня\r\nbob@example.com\tБоб\r\n"
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    path.write_bytes(bom + text.encode(encoding))
    source = RecipientFile(path, encoding=encoding)
    await source.scan()
    good = [item async for item in source]
    assert [(r.mailbox.addr, r.mailbox.name, r.line) for r in good] == [  # type: ignore[union-attr]
        ("ann@example.com", "Аня", 2),
        ("bob@example.com", "Боб", 3),
    ]


async def test_a_utf16_text_list_counts_lines_in_characters(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    good = "a@example.com\nb@example.com\nc@example.com\n".encode("utf-16")
    path.write_bytes(good + b"\x00\xdc" + "@example.com\n".encode("utf-16-le"))  # line 4

    with pytest.raises(InputError) as caught:
        await RecipientFile(path, encoding="utf-16").scan()
    assert str(caught.value) == (
        f"{path}:4: not valid utf-16 text (recipients_encoding: is it in another one?)"
    )
    path.write_bytes(good + "\x00\n".encode("utf-16-le"))  # a NUL character, not a NUL byte
    with pytest.raises(InputError, match=rf"^{path}:4: contains a NUL byte"):
        await RecipientFile(path, encoding="utf-16").scan()
    path.write_bytes(good)
    await RecipientFile(path, encoding="utf-16").scan()  # its NUL bytes are no NUL characters


async def test_bytes_that_do_not_decode_name_the_line_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    # 0x98 is the one byte cp1251 leaves undefined; 2 MB of rows before it span the chunks.
    rows = "".join(f"user{n}@example.com;Аня\n" for n in range(80_000))
    path.write_bytes(("email;name\n" + rows).encode("cp1251") + b"x@example.com;\x98\n")
    with pytest.raises(InputError) as caught:
        await RecipientFile(path, encoding="cp1251").scan()
    assert str(caught.value) == (
        f"{path}:80002: not valid cp1251 text (recipients_encoding: is it in another one?)"
    )
    path.write_bytes("email;name\nann@example.com;Аня\n".encode("cp1251"))
    with pytest.raises(InputError) as caught:
        await RecipientFile(path).scan()
    assert str(caught.value) == (
        f"{path}:2: not valid UTF-8 text (save the list as UTF-8, or set recipients_encoding)"
    )
    path.write_bytes(b"email\nann@example.com\n\xd0")
    with pytest.raises(InputError, match=rf"^{path}:3: .*: the file ends inside a character"):
        await RecipientFile(path).scan()


async def test_a_header_that_does_not_decode_is_an_input_error_too(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(b"em\xffail\na@example.com\n")
    with pytest.raises(InputError, match=rf"^{path}:1: not valid UTF-8 text"):
        async for _ in RecipientFile(path):  # without the scan first
            pass


async def test_a_cp1251_list_is_checked_and_read_in_flat_memory(tmp_path: Path) -> None:
    async def peak(rows: int) -> int:
        path = tmp_path / f"{rows}.csv"
        with path.open("w", encoding="cp1251") as handle:
            handle.write("email;имя\n")
            handle.writelines(f"user{i}@example.com;Пользователь {i}\n" for i in range(rows))
        source = RecipientFile(path, encoding="cp1251")
        tracemalloc.start()
        try:
            await source.scan()
            count = 0
            async for batch in source.batches(fields=False):
                count += len(batch)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert count == rows

    # 3 MB and 9 MB of list (18 MB as text): the same few MB of chunk and batch for both.
    small, large = await peak(80_000), await peak(240_000)
    assert large < small * 1.2 and large < 8 * 1024 * 1024, (small, large)


def received(running: RunningServer) -> dict[str, EmailMessage]:
    """What the server received, parsed, by recipient."""
    got = {}
    for message in running.messages:
        parsed = BytesParser(policy=policy.default).parsebytes(message.data)
        assert isinstance(parsed, EmailMessage)
        [rcpt] = message.rcpt_tos
        got[rcpt] = parsed
    return got


async def test_a_semicolon_cp1251_list_from_a_spreadsheet_reaches_the_server(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "members.csv"
    listing.write_bytes(
        (
            "email;name;город;\r\n"  # what Excel writes in a Russian locale, sniffed
            "anna@example.com;Анна Петрова;Москва;\r\n"
            "boris@example.org;Борис;Санкт-Петербург\r\n"  # a short row: no last cell
            "vera@example.net;Вера\r\n"  # two short: her city is empty
            "gleb@example.com;Глеб;Тверь;x;y\r\n"  # a long one: a bad row
        ).encode("cp1251")
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(listing),
        recipients_encoding="cp1251",
        personalize=True,
        subject="{{ name }}, {{ row['город'] or 'где вы?' }}",
        body="Здравствуйте, {{ name }}!\n",
        suffix=".yaml",
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.counts[Status.ACCEPTED] == 3
    [bad] = report.problems
    assert (bad.recipient, bad.message) == (
        "gleb@example.com;Глеб;Тверь;x;y",
        f"{listing}:5: expected 4 columns, found 5",
    )
    got = received(running)
    assert sorted(got) == ["anna@example.com", "boris@example.org", "vera@example.net"]
    for addr, name, subject in [
        ("anna@example.com", "Анна Петрова", "Анна Петрова, Москва"),
        ("boris@example.org", "Борис", "Борис, Санкт-Петербург"),
        ("vera@example.net", "Вера", "Вера, где вы?"),
    ]:
        [to] = got[addr]["To"].addresses
        assert (to.display_name, to.addr_spec) == (name, addr)
        assert got[addr]["Subject"] == subject
        body = got[addr].get_body(("plain",))
        assert body is not None
        assert body.get_content().replace("\r\n", "\n") == f"Здравствуйте, {name}!\n"


async def test_a_utf16_tab_list_and_a_tab_delimiter_key(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "unicode.csv"  # Excel's "Unicode text": UTF-16 with a BOM, tabs
    text = "name\temail\r\nZoë, Ann\tzoe@example.com\r\n日本\tjp@example.org\r\n"
    listing.write_bytes(text.encode("utf-16"))
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(listing),
        recipients_encoding="utf-16",
        recipients_delimiter="tab",
        group_size=1,
        suffix=".yaml",
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.counts[Status.ACCEPTED] == 2 and report.problems == []
    got = received(running)
    assert [a.display_name for a in got["zoe@example.com"]["To"].addresses] == ["Zoë, Ann"]
    assert [a.display_name for a in got["jp@example.org"]["To"].addresses] == ["日本"]


async def test_a_list_in_the_wrong_encoding_stops_the_run_before_anything_is_sent(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"email,name\na@example.com,A\nb@example.com,\xc1\xe8\n")  # cp1251
    path = make_campaign(
        port=running.server.ssl_port, to=None, cc=None, recipients_file=str(listing)
    )
    with pytest.raises(InputError) as caught:
        await run_campaign(await load_campaign(path, env={}))
    assert str(caught.value) == (
        f"{listing}:3: not valid UTF-8 text (save the list as UTF-8, or set recipients_encoding)"
    )
    assert running.messages == []
