"""Build the message: the MIME tree is built, encoded and dot-stuffed once per run.

A `MessageTemplate` holds the bytes shared by every message of a campaign (From, Subject, the
text body and every attachment, already base64-encoded, CRLF-terminated and dot-stuffed).
`render()` adds the headers that differ per message (Date, Message-ID, To, Cc, and the
DKIM-Signature when the campaign signs) and returns the
exact bytes to write after DATA, final ``.`` included: nothing is re-encoded or re-scanned per send.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import re
import time
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from enum import Enum
from pathlib import Path
from typing import Any, cast

from .addresses import ATOM, Mailbox
from .attachments import Attachment, Part, Spooled, check_filename, spool
from .dkim import Algorithm, BodyHash, DkimSigner, header_fields
from .errors import InputError
from .textfiles import read_text
from .unsubscribe import ListUnsubscribe

__all__ = [
    "END_OF_DATA",
    "UNRECORDED_RUN",
    "Attachment",
    "MessageTemplate",
    "Part",
    "envelope_id",
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


def message_ids(domain: str, count: int) -> list[str]:
    """`count` Message-IDs of the form email.utils.make_msgid() gives, without its getpid()
    per id (a system call: a tenth of a long list's load into the journal)."""
    stem = f"{int(time.time() * 100)}.{os.getpid()}"
    return [f"<{stem}.{random.getrandbits(64)}@{domain}>" for _ in range(count)]


# The run part of an envelope id when the run is in no catalog (`run_campaign` called as a
# library, without `RunOptions.run_id`).
UNRECORDED_RUN = "unrecorded"


def envelope_id(run_id: str, message_id: str) -> str:
    """The DSN envelope id (RFC 3461 ENVID) of a message: ``<run id>.<the Message-ID's left
    part>``: ``20261202T031423Z.176489060312.4711.9912781263`` for the Message-ID
    ``<176489060312.4711.9912781263@example.com>`` (its domain is the sender's). Run ids hold
    no dot, so a bounce processor splits at the first one; the left part is unique, and the
    whole stays within ENVID's 100 characters."""
    local = message_id.strip("<>").rpartition("@")[0] or message_id.strip("<>")
    return f"{run_id}.{local}"


def message_size(parts: Sequence[Part]) -> int:
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
    return await read_text(path, "message file", field="file_with_message")


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
_LONGEST_LINE = 998  # RFC 5322 section 2.1.1, without the CRLF


def _subject(subject: str) -> bytes:
    """The Subject header, RFC 2047-encoded and folded (`_unstructured`)."""
    return _unstructured("Subject", subject)


def _unstructured(name: str, value: str) -> bytes:
    """An unstructured header (the Subject, a personalised extra header), RFC 2047-encoded and
    folded.

    Python's own folder drops spaces between encoded words in long non-ASCII values
    (CPython gh-92081), so non-ASCII values are encoded with `email.header.Header`, which keeps
    every space inside an encoded word and round-trips exactly.
    """
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE and _PLAIN_TEXT.match(value) and "=?" not in value:
        return (line + "\r\n").encode("ascii")
    if value.isascii() and "=?" not in value:
        return _fold(name, value)
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: ".encode("ascii") + encoded.encode("ascii") + b"\r\n"


_TEXT_MARK = "ASYNCMAILER-TEXT-PART-f3b1c2d4"  # stands for the text while the tree is built
_ATTACHMENT_MARK = "ASYNCMAILER-ATTACHMENT-9c2e"  # and for each attachment's body
_HTML_MARK = "ASYNCMAILER-HTML-PART-7a41e09b"  # and for a personal HTML part


def _encode_text(text: str) -> bytes:
    """A personalised text (or HTML) as UTF-8, quoted-printable, CRLF-terminated and
    dot-stuffed: the body of a part whose headers the shared template already has
    (docs/design.md: message template). binascii's encoder is C, 2-3 times faster than the
    email package's `quoprimime` for the same decoded text (lines of at most 76 characters,
    RFC 2045; "=" always "=3D", so no text can contain a MIME boundary)."""
    lines = text.encode("utf-8").splitlines()  # every CR, LF and CRLF: one line break
    encoded = binascii.b2a_qp(b"\n".join(lines) + b"\n", istext=True)
    # Its line breaks are all LF (a CR would have split a line above), so what prepare_data
    # does is one replace, and stuffing only when a line starts with a dot (rare).
    encoded = encoded.replace(b"\n", b"\r\n")
    if encoded.startswith(b".") or b"\n." in encoded:
        encoded = _LEADING_DOT.sub(b"..", encoded)
    return encoded


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
        reply_to: Sequence[Mailbox] = (),
        headers: Sequence[tuple[str, str]] = (),
        list_unsubscribe: ListUnsubscribe | None = None,
        html: str | None = None,
        images: Sequence[Attachment] = (),
        dkim: DkimSigner | None = None,
    ) -> None:
        self.sender = sender
        self.personal = personal
        self.html = html is not None
        self._unsubscribe = list_unsubscribe
        # The same for every message unless it carries each recipient's own link.
        self._unsubscribe_header = (
            list_unsubscribe.header("")
            if list_unsubscribe is not None and not list_unsubscribe.personal
            else b""
        )
        mime = EmailMessage(policy=POLICY)
        if personal:
            mime.set_content(_TEXT_MARK, charset="utf-8", cte="quoted-printable")
        else:
            mime.set_content(body, charset="utf-8")
        if html is not None:
            # multipart/alternative: the text first, the HTML last (the one clients prefer);
            # its images beside it in multipart/related, each by its Content-ID.
            if personal:
                mime.add_alternative(_HTML_MARK, subtype="html", cte="quoted-printable")
            else:
                mime.add_alternative(html, subtype="html", charset="utf-8")
            html_part = cast(EmailMessage, list(mime.iter_parts())[-1])
            for image in images:
                check_filename(image.filename, image.source or Path(image.filename))
                maintype, _, subtype = image.content_type.partition("/")
                html_part.add_related(
                    image.data,
                    maintype=maintype,
                    subtype=subtype,
                    cid=f"<{image.filename}>",
                    disposition="inline",
                    filename=image.filename,
                )
        # Each attachment goes into the tree as a stand-in, replaced by its encoded body once
        # the tree is serialised: a large one is never in memory whole (`attachments.spool`).
        marks = []
        for number, attachment in enumerate(attachments):
            check_filename(attachment.filename, attachment.source or Path(attachment.filename))
            maintype, _, subtype = attachment.content_type.partition("/")
            mark = f"{_ATTACHMENT_MARK}-{number}".encode("ascii")
            mime.add_attachment(
                mark, maintype=maintype, subtype=subtype, filename=attachment.filename
            )
            marks.append(base64.b64encode(mark) + b"\r\n")
        serialised = mime.as_bytes(policy=POLICY)
        mime_headers, _, mime_body = serialised.partition(b"\r\n\r\n")
        subject_header = b"" if personal else _subject(subject)
        extra = b"".join(_fold(name, value) for name, value in headers)
        if reply_to:
            extra = _address_header("Reply-To", reply_to) + extra
        shared = prepare_data(
            _address_header("From", [sender])
            + subject_header
            + extra
            + mime_headers
            + b"\r\n\r\n"
            + mime_body,
            terminate=False,
        )
        self._spooled: list[Spooled] = []
        pieces: list[Part] = []
        rest = shared
        try:
            for attachment, mark in zip(attachments, marks, strict=True):
                before, found, rest = rest.partition(mark)
                assert found, "the attachment's stand-in is in the serialised tree"
                pieces.append(_literal_filename(before, attachment.filename))
                pieces.append(self._encode(attachment))
        except BaseException:
            self.close()
            raise
        pieces.append(rest)
        # A personal template's layout: the shared bytes with a slot for each text made per
        # message (the text, and the HTML when there is one).
        slots = [(_TEXT_MARK, _Slot.TEXT)] + ([(_HTML_MARK, _Slot.HTML)] if html else [])
        layout: list[Part | _Slot] = list(pieces)
        for stand_in, slot in slots if personal else []:
            marker = stand_in.encode("ascii") + b"\r\n"
            at = next(i for i, p in enumerate(layout) if isinstance(p, bytes) and marker in p)
            before, _, after = cast(bytes, layout[at]).partition(marker)
            layout[at : at + 1] = [before, slot, after]
        self._shared = _joined(layout)
        self._dkim = dkim
        self._dkim_fields: list[tuple[bytes, bytes]] = []
        self._body_from = len(self._shared)  # where a message's own body hash goes on
        self._body_hash = BodyHash()
        self._body_value = ""
        if dkim is not None:
            try:
                self._hash_shared_body()
            except BaseException:
                self.close()
                raise
        self._slow = dkim is not None and (
            dkim.key.algorithm is Algorithm.RSA_SHA256
            or any(isinstance(p, Spooled) for p in self._shared[self._body_from :])
        )
        self._msgid_domain = sender.domain
        self._date_second = -1
        self._date_header = b""

    def _hash_shared_body(self) -> None:
        """What DKIM needs of the shared bytes, once per campaign (blocking: a spooled
        attachment is read back a chunk at a time): their header fields, and the body hash,
        or for a personal template the hash of the body up to its first per-message text,
        from which each message's own hash goes on."""
        first = self._shared[0]
        assert isinstance(first, bytes), "the shared bytes begin with the headers"
        end = first.index(b"\r\n\r\n") + 2
        self._dkim_fields = header_fields(first[:end])
        body = BodyHash()
        body.update(first[end + 2 :])
        rest = self._shared[1:]
        self._body_from = next(
            (i + 1 for i, p in enumerate(rest) if isinstance(p, _Slot)), len(self._shared)
        )
        for part in self._shared[1 : self._body_from]:
            body.update_part(part)
        self._body_hash = body
        self._body_value = body.value()

    @property
    def renders_slowly(self) -> bool:
        """A message takes long enough to make that it is made in a thread: an RSA signature
        (~0.3 ms in OpenSSL, which lets go of the GIL meanwhile), or a signed personal message
        that reads a spooled attachment again for its own body hash."""
        return self._slow

    def _signed(self, head: bytes, made: dict[_Slot, bytes] | None = None) -> bytes:
        """`head` with the DKIM-Signature header on top, when the campaign signs; `made`:
        a personal message's own texts, in its own body hash."""
        if self._dkim is None:
            return head
        body_hash = self._body_value
        if made is not None:
            body = self._body_hash.copy()
            for part in self._shared[self._body_from :]:
                body.update_part(made[part] if isinstance(part, _Slot) else part)
            body_hash = body.value()
        fields = header_fields(head) + self._dkim_fields
        return self._dkim.signature(fields, body_hash, timestamp=int(time.time())) + head

    def _encode(self, attachment: Attachment) -> Part:
        """An attachment's body as base64 lines with CRLF (never starting with "."): in
        memory, or spooled into a temporary file when it is large."""
        if attachment.source is None:
            return base64.encodebytes(attachment.data).replace(b"\n", b"\r\n")
        try:
            spooled = spool(attachment.source)
        except OSError as err:
            raise InputError(
                f"cannot read attachment: {err.strerror}", path=attachment.source
            ) from err
        self._spooled.append(spooled)
        return spooled

    def close(self) -> None:
        """Delete the temporary files of large attachments."""
        for spooled in self._spooled:
            spooled.close()
        self._spooled.clear()

    def __enter__(self) -> MessageTemplate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        html: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[Part, ...]:
        """The message for one transaction as parts (its own headers, then the shared bytes,
        and for a personal template its encoded `text` and the bytes after it), dot-stuffed
        and CRLF-terminated, without the final ``.`` that `Session.send()` writes.

        Writing the parts one after the other sends the message; the shared parts, with every
        attachment, are never copied. Bcc recipients are never written here. A personal
        template needs `subject` (already checked for line breaks) and `text`, and `html`
        when it has HTML; `headers` are its recipient's own extra headers (their values
        checked too, non-ASCII RFC 2047-encoded here).
        """
        head = [
            self._date(),
            b"Message-ID: " + (message_id or self.new_message_id()).encode("ascii") + b"\r\n",
        ]
        head.append(_address_header("To", to) if to else b"To: undisclosed-recipients:;\r\n")
        if cc:
            head.append(_address_header("Cc", cc))
        if self._unsubscribe is not None:
            if self._unsubscribe_header:
                head.append(self._unsubscribe_header)
            else:  # each recipient's own link: one recipient per message (config sees to it)
                head.append(self._unsubscribe.header(to[0].addr))
        if not self.personal:
            # Header lines made here end in CRLF and never start with "." (they start with a
            # name, or with white space when folded): nothing to normalise or stuff.
            if len(self._shared) == 1:  # no large attachment: the common case
                return self._signed(b"".join(head)), self._shared[0]
            return (self._signed(b"".join(head)), *self._shared)
        assert subject is not None and text is not None, "a personal template needs both"
        assert html is not None or not self.html, "and its HTML, when it has one"
        head.append(_subject(subject))
        head.extend(_unstructured(name, value) for name, value in headers)
        made = {_Slot.TEXT: _encode_text(text)}
        if html is not None:
            made[_Slot.HTML] = _encode_text(html)
        return (
            self._signed(b"".join(head), made),
            *(made[p] if isinstance(p, _Slot) else p for p in self._shared),
        )


class _Slot(Enum):
    """Where a personal template's per-message text goes."""

    TEXT = "text"
    HTML = "html"


def _joined(pieces: Sequence[Any]) -> tuple[Any, ...]:
    """Consecutive bytes joined into one; spooled attachments and slots stay apart."""
    parts: list[Any] = []
    for piece in pieces:
        if isinstance(piece, bytes) and parts and isinstance(parts[-1], bytes):
            parts[-1] += piece
        else:
            parts.append(piece)
    return tuple(parts)


# A file name any parser reads back as written from filename="...": else RFC 2231.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._,()+-]*|[^\x00-\x7f]*[^\x00-\x7f][^\x00-\x7f]*")
_DISPOSITION = re.compile(
    rb"^Content-Disposition:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", re.MULTILINE | re.IGNORECASE
)


def _literal_filename(before: bytes, filename: str) -> bytes:
    """`before` (the serialised tree up to an attachment's body, its headers last) with the
    file name as RFC 2231 ``filename*=`` whenever the email package would write it as
    ``filename="..."`` with anything but letters, digits and plain punctuation: a client would
    decode ``=?utf-8?b?...?=`` into another name (``evil.exe``), and parsers differ on
    quotes, backslashes and brackets in a quoted string. RFC 2231 values carry them as
    written."""
    if _PLAIN_NAME.fullmatch(filename):
        return before
    start = before.rfind(b"\r\n--") + 2
    # Percent-encoded a character at a time, so a line break never splits an escape.
    lines: list[str] = []
    for char in filename:
        piece = urllib.parse.quote(char, safe="")
        if not lines or len(lines[-1]) + len(piece) > 60:
            lines.append("")
        lines[-1] += piece
    quoted = "".join(lines)
    if len(lines) == 1:
        value = f"attachment;\r\n filename*=utf-8''{quoted}"
    else:
        value = "attachment;" + ";".join(
            f"\r\n filename*{n}*={'utf-8' + chr(39) * 2 if n == 0 else ''}{line}"
            for n, line in enumerate(lines)
        )
    header = f"Content-Disposition: {value}".encode("ascii")
    head, count = _DISPOSITION.subn(header, before[start:], count=1)
    assert count == 1, "the attachment's headers name it"
    return before[:start] + head


def _address_header(name: str, mailboxes: Sequence[Mailbox]) -> bytes:
    """To/Cc: one plain ASCII address is written directly; anything else is folded and
    RFC 2047-encoded by the email package."""
    if len(mailboxes) == 1 and mailboxes[0].addr.isascii():
        mailbox = mailboxes[0]
        if not mailbox.name:
            return f"{name}: {mailbox.addr}\r\n".encode("ascii")
        line = f"{name}: {mailbox.name} <{mailbox.addr}>"
        if len(line) <= _MAX_LINE and _PLAIN_PHRASE.match(mailbox.name) and "=?" not in line:
            return (line + "\r\n").encode("ascii")
    if not any("=?" in m.name for m in mailboxes):
        folded = _fold(name, ", ".join(str(m) for m in mailboxes))
        if max(map(len, folded.split(b"\r\n"))) <= _LONGEST_LINE:
            return folded
        # A word the folder cannot break (a name of 1,000 letters from a list row): encoded
        # words can be split anywhere, so RFC 2047 keeps every line within RFC 5322's limit.
    # A name that looks like an encoded word would be decoded by clients into another
    # (=?utf-8?b?QWRtaW4=?= shows as "Admin"): encoded as RFC 2047 itself, it shows as
    # written.
    return (f"{name}: " + ",\r\n ".join(_literal_name(name, m) for m in mailboxes) + "\r\n").encode(
        "ascii"
    )


def _literal_name(name: str, mailbox: Mailbox) -> str:
    """The mailbox with its display name RFC 2047-encoded whatever it holds: encoded words of
    at most 75 characters (RFC 2047 section 2), folded with CRLF."""
    if not mailbox.name:
        return mailbox.addr
    encoded = Header(mailbox.name, "utf-8", maxlinelen=76, header_name=name).encode(linesep="\r\n")
    return f"{encoded} <{mailbox.addr}>"


def _now() -> datetime:
    return datetime.now().astimezone()
