"""Build the message: the MIME tree is built, encoded and dot-stuffed once per run.

A `MessageTemplate` holds the bytes shared by every message of a campaign (From, Subject, the
text body and every attachment, already base64-encoded, CRLF-terminated and dot-stuffed).
`render()` adds the headers that differ per message (Date, Message-ID, To, Cc) and returns the
exact bytes to write after DATA, final ``.`` included: nothing is re-encoded or re-scanned per send.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy as email_policy
from email import quoprimime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import aiofiles

from .addresses import ATOM, Mailbox
from .errors import InputError
from .textfiles import decode_text

__all__ = [
    "END_OF_DATA",
    "Attachment",
    "MessageTemplate",
    "load_attachments",
    "load_body",
    "message_ids",
    "message_size",
    "prepare_data",
]

# SMTP line endings, and every part 7-bit clean so no server needs 8BITMIME.
POLICY = email_policy.SMTP.clone(cte_type="7bit")

END_OF_DATA = b".\r\n"
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file to attach, read once."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


def message_ids(domain: str, count: int) -> list[str]:
    """`count` Message-IDs of the form email.utils.make_msgid() gives, without its getpid()
    per id (a system call: a tenth of a long list's load into the journal)."""
    stem = f"{int(time.time() * 100)}.{os.getpid()}"
    return [f"<{stem}.{random.getrandbits(64)}@{domain}>" for _ in range(count)]


def message_size(parts: Sequence[bytes]) -> int:
    """The bytes of a message on the wire: its parts (`MessageTemplate.render_parts()`) and
    the final "."."""
    return sum(map(len, parts)) + len(END_OF_DATA)


def prepare_data(message: bytes, *, terminate: bool = True) -> bytes:
    """Make bytes safe to send after DATA.

    Every line ending becomes CRLF (a lone CR or LF can never end the DATA phase early, which is
    what SMTP smuggling relies on), every line starting with ``.`` gets a second dot (RFC 5321
    4.5.2), the text ends with CRLF, and with `terminate` the closing ``.`` CRLF is appended.
    """
    data = _LINE_ENDINGS.sub(b"\r\n", message)
    data = _LEADING_DOT.sub(b"..", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + END_OF_DATA if terminate else data


async def load_body(path: Path) -> str:
    """Read the message text as UTF-8.

    :raises InputError: missing file, not UTF-8, or a NUL byte (with the line).
    """
    try:
        async with aiofiles.open(path, "rb") as handle:
            raw = await handle.read()
    except OSError as err:
        raise InputError(
            f"cannot read the message file: {err.strerror}", path=path, field="file_with_message"
        ) from None
    return decode_text(raw, path)


def _list_files(folder: Path) -> list[tuple[Path, str]]:
    """Regular files of `folder` (hidden ones skipped), sorted by name, with their MIME type."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            content_type, encoding = mimetypes.guess_type(entry.name, strict=False)
            if content_type is None or encoding is not None:
                content_type = "application/octet-stream"
            entries.append((Path(entry.path), content_type))
    return sorted(entries, key=lambda item: item[0].name)


async def load_attachments(folder: Path | None) -> list[Attachment]:
    """Read every regular file of `folder`, without blocking the event loop.

    :raises InputError: the folder or a file cannot be read.
    """
    if folder is None:
        return []
    try:
        listing = await asyncio.to_thread(_list_files, folder)
    except OSError as err:
        raise InputError(
            f"cannot list the attachments folder: {err.strerror}", path=folder, field="attachments"
        ) from None
    attachments = []
    for path, content_type in listing:
        try:
            async with aiofiles.open(path, "rb") as handle:
                data = await handle.read()
        except OSError as err:
            raise InputError(f"cannot read attachment: {err.strerror}", path=path) from None
        attachments.append(Attachment(path.name, content_type, data))
    return attachments


def _fold(name: str, value: str) -> bytes:
    """One header, folded and encoded (RFC 2047) by the email package."""
    header = POLICY.header_factory(name, value)
    folded: str = header.fold(policy=POLICY)
    return folded.encode("ascii")


# Header values the email package would write as they are: printable ASCII words separated by
# single spaces, no encoded-word look-alike, on one line of at most 78 characters. Written
# directly, they cost a format instead of a parse and a fold (checked byte for byte against
# the email package in tests/test_message.py).
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")
_PLAIN_PHRASE = re.compile(rf"{ATOM}(?: {ATOM})*\Z")  # a display name needing no quotes
_MAX_LINE = POLICY.max_line_length or 78


def _subject(subject: str) -> bytes:
    """The Subject header, RFC 2047-encoded and folded.

    Python's own folder drops spaces between encoded words in long non-ASCII subjects
    (CPython gh-92081), so non-ASCII subjects are encoded with `email.header.Header`, which keeps
    every space inside an encoded word and round-trips exactly.
    """
    line = "Subject: " + subject
    if len(line) <= _MAX_LINE and _PLAIN_TEXT.match(subject) and "=?" not in subject:
        return (line + "\r\n").encode("ascii")
    if subject.isascii() and "=?" not in subject:
        return _fold("Subject", subject)
    encoded = Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return b"Subject: " + encoded.encode("ascii") + b"\r\n"


_TEXT_MARK = "ASYNCMAILER-TEXT-PART-f3b1c2d4"  # stands for the text while the tree is built


def _encode_text(text: str) -> bytes:
    """A personalised text, encoded as the email package encodes the campaign's text part
    (UTF-8, quoted-printable: what `set_content(text, cte="quoted-printable")` does, without
    building a message per recipient; docs/design.md: message template), CRLF-terminated and
    dot-stuffed."""
    lines = text.encode("utf-8").splitlines()
    body = b"\n".join(lines).decode("latin-1") + "\n"
    encoded = quoprimime.body_encode(body, _MAX_LINE)
    return prepare_data(encoded.encode("ascii"), terminate=False)


class MessageTemplate:
    """The campaign's message, built once; `render()` gives each transaction its bytes.

    With `personal`, the subject and the text differ per message: the tree is built once with a
    stand-in for the text, which is quoted-printable (so its headers are fixed and no text can
    contain the MIME boundary: QP writes every "=" as "=3D"), and the bytes before and after it
    are kept. Each message then costs its head and its encoded text; the attachments are still
    encoded once.
    """

    def __init__(
        self,
        *,
        sender: Mailbox,
        subject: str,
        body: str,
        attachments: Sequence[Attachment] = (),
        personal: bool = False,
    ) -> None:
        self.sender = sender
        self.personal = personal
        mime = EmailMessage(policy=POLICY)
        if personal:
            mime.set_content(_TEXT_MARK, charset="utf-8", cte="quoted-printable")
        else:
            mime.set_content(body, charset="utf-8")
        for attachment in attachments:
            maintype, _, subtype = attachment.content_type.partition("/")
            mime.add_attachment(
                attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
            )
        serialised = mime.as_bytes(policy=POLICY)
        mime_headers, _, mime_body = serialised.partition(b"\r\n\r\n")
        subject_header = b"" if personal else _subject(subject)
        shared = prepare_data(
            _fold("From", str(sender)) + subject_header + mime_headers + b"\r\n\r\n" + mime_body,
            terminate=False,
        )
        if personal:
            before, mark, after = shared.partition(_TEXT_MARK.encode("ascii") + b"\r\n")
            assert mark, "the text's stand-in is in the serialised tree"
            self._shared, self._after_text = before, after
        else:
            self._shared, self._after_text = shared, b""
        self._msgid_domain = sender.domain
        self._date_second = -1
        self._date_header = b""

    def new_message_id(self) -> str:
        return message_ids(self._msgid_domain, 1)[0]

    def _date(self) -> bytes:
        """The Date header, made once per second rather than once per message."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = _fold("Date", format_datetime(_now()))
        return self._date_header

    def render_parts(
        self,
        *,
        to: Sequence[Mailbox],
        cc: Sequence[Mailbox] = (),
        message_id: str | None = None,
        subject: str | None = None,
        text: str | None = None,
    ) -> tuple[bytes, ...]:
        """The message for one transaction as parts (its own headers, then the shared bytes,
        and for a personal template its encoded `text` and the bytes after it), dot-stuffed
        and CRLF-terminated, without the final ``.`` that `Session.send()` writes.

        Writing the parts one after the other sends the message; the shared parts, with every
        attachment, are never copied. Bcc recipients are never written here. A personal
        template needs `subject` (already checked for line breaks) and `text`.
        """
        head = [
            self._date(),
            b"Message-ID: " + (message_id or self.new_message_id()).encode("ascii") + b"\r\n",
        ]
        head.append(_address_header("To", to) if to else b"To: undisclosed-recipients:;\r\n")
        if cc:
            head.append(_address_header("Cc", cc))
        if not self.personal:
            # Header lines made here end in CRLF and never start with "." (they start with a
            # name, or with white space when folded): nothing to normalise or stuff.
            return b"".join(head), self._shared
        assert subject is not None and text is not None, "a personal template needs both"
        head.append(_subject(subject))
        return b"".join(head), self._shared, _encode_text(text), self._after_text


def _address_header(name: str, mailboxes: Sequence[Mailbox]) -> bytes:
    """To/Cc: one plain ASCII address is written directly; anything else is folded and
    RFC 2047-encoded by the email package."""
    if len(mailboxes) == 1 and mailboxes[0].addr.isascii():
        mailbox = mailboxes[0]
        if not mailbox.name:
            return f"{name}: {mailbox.addr}\r\n".encode("ascii")
        line = f"{name}: {mailbox.name} <{mailbox.addr}>"
        if len(line) <= _MAX_LINE and _PLAIN_PHRASE.match(mailbox.name):
            return (line + "\r\n").encode("ascii")
    return _fold(name, ", ".join(str(m) for m in mailboxes))


def _now() -> datetime:
    return datetime.now().astimezone()
