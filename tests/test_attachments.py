"""Attachments: which files of the folder are attached, under which names, and a large one
streamed from a temporary file, arriving byte for byte."""

from __future__ import annotations

import email
import os
from email import policy
from pathlib import Path

import pytest

from asyncmailer.addresses import parse_mailbox
from asyncmailer.attachments import Attachment, Spooled, encoded_size, load_attachments
from asyncmailer.errors import InputError
from asyncmailer.message import END_OF_DATA, MessageTemplate, message_size
from asyncmailer.transport import Envelope, Transaction

from .conftest import USER, Certs, ServerFactory, session_for, settings_for


def template(*attachments: Attachment) -> MessageTemplate:
    return MessageTemplate(
        sender=parse_mailbox("Sender <sender@example.com>"),
        subject="files",
        body="see attached\n",
        attachments=attachments,
    )


def payload(t: MessageTemplate) -> email.message.EmailMessage:
    """The message as a client parses it (the spooled parts read from their files)."""
    data = bytearray()
    for part in t.render_parts(to=[parse_mailbox("a@example.com")]):
        if isinstance(part, Spooled):
            for offset, count in part.chunks(1 << 16):
                data += part.read(offset, count)
        else:
            data += part
    data = data.replace(b"\r\n..", b"\r\n.")
    return email.message_from_bytes(bytes(data), policy=policy.default)


async def test_load_attachments_sorted_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "b.pdf").write_bytes(b"B")
    (tmp_path / "a.txt").write_bytes(b"A")
    (tmp_path / "Я.bin").write_bytes(b"C")
    (tmp_path / ".gitkeep").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.txt").write_bytes(b"no")
    attachments = await load_attachments(tmp_path)
    assert [(a.filename, a.content_type, a.data) for a in attachments] == [
        ("a.txt", "text/plain", b"A"),
        ("b.pdf", "application/pdf", b"B"),
        ("Я.bin", "application/octet-stream", b"C"),
    ]
    assert await load_attachments(tmp_path / "sub") == [
        Attachment("inner.txt", "text/plain", b"no")
    ]
    assert await load_attachments(tmp_path / "sub" / "..") != []


async def test_an_empty_folder_means_no_attachments(tmp_path: Path) -> None:
    assert await load_attachments(tmp_path) == []


def test_a_name_that_looks_like_an_encoded_word_arrives_literally() -> None:
    name = "=?utf-8?b?ZXZpbC5leGU=?="  # "evil.exe", if a client decoded it
    long = "=?utf-8?q?" + "x" * 40 + "=" * 30 + "?=.pdf"  # escapes across the folded lines
    message = payload(
        template(
            Attachment(name, "application/pdf", b"%PDF"),
            Attachment(long, "application/pdf", b"%PDF"),
            Attachment("отчёт.pdf", "application/pdf", b"%PDF"),
        )
    )
    assert [a.get_filename() for a in message.iter_attachments()] == [name, long, "отчёт.pdf"]
    assert [a.get_content() for a in message.iter_attachments()] == [b"%PDF"] * 3


@pytest.mark.parametrize(
    "name",
    [
        "report\r\nBcc: x@example.com.pdf",
        "a\x1b]0;title\x07.txt",
        "invoice\u202efdp.exe",
        "a\u200bb.txt",
    ],
)
async def test_names_with_control_or_spoofing_characters_are_refused(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match=r"the file name holds U\+") as caught:
        await load_attachments(tmp_path)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    with pytest.raises(InputError, match=r"the file name holds U\+"):
        template(Attachment(name, "text/plain", b"x"))


async def test_a_link_outside_the_folder_is_refused_unless_asked_for(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"not for mailing")
    (folder / "inside.txt").write_bytes(b"ok")
    (folder / "also.txt").symlink_to(folder / "inside.txt")  # a link inside: fine
    assert [a.filename for a in await load_attachments(folder)] == ["also.txt", "inside.txt"]
    (folder / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InputError, match="outside the attachments folder"):
        await load_attachments(folder)
    attached = await load_attachments(folder, follow_symlinks=True)
    assert [a.data for a in attached if a.filename == "leak.txt"] == [b"not for mailing"]


async def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="not a regular file"):
        await load_attachments(tmp_path)


async def test_a_large_attachment_is_spooled_and_arrives_byte_for_byte(
    tmp_path: Path, smtp_server: ServerFactory, certs: Certs
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(data)
    with template(Attachment("big.bin", "application/octet-stream", source=source)) as t:
        parts = t.render_parts(to=[parse_mailbox("a@example.com")])
        [spooled] = [p for p in parts if isinstance(p, Spooled)]
        assert len(spooled) == encoded_size(len(data))
        assert [a.get_content() for a in payload(t).iter_attachments()] == [data]
        running = await smtp_server()
        async with session_for(settings_for(running, certs)) as session:
            sent = await session.send(Transaction(Envelope(USER, ["a@example.com"]), parts))
        assert [r.status.value for r in sent.results] == ["accepted"]
        [received] = running.messages
        assert len(received.data) + len(END_OF_DATA) >= message_size(parts) - 64
        parsed = email.message_from_bytes(received.data, policy=policy.default)
        assert [a.get_content() for a in parsed.iter_attachments()] == [data]
