"""A written message as a person reads it: its envelope, its headers decoded, the top of its
text and a line for each other part (what `send --dry-run` shows of the first message). The
raw file holds encoded words, quoted-printable and base64, which say little at a glance."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Mapping, Sequence
from email.message import Message
from typing import cast

from .display import printable, shorten
from .results import plural

__all__ = ["describe_size", "preview"]

# The MIME plumbing of the top level: its parts are listed instead.
_PLUMBING = frozenset({"mime-version", "content-type", "content-transfer-encoding"})
_ALL_SHOWN = 10  # envelope recipients named in full up to this many (Bcc is only there)
_SHOWN_RECIPIENTS = 3  # named of a longer envelope
_LINE = 300  # characters of a line of text shown (an HTML part may be one long line)


def describe_size(size: int) -> str:
    """``54 bytes``, ``2.1 KB``, ``9.0 MB`` (powers of 1,024)."""
    if size < 1024:
        return plural(size, "byte")
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def preview(
    data: bytes, envelope: Mapping[str, object] | None = None, *, text_lines: int = 20
) -> list[str]:
    """Lines that show the message `data` (as written, CRLF line ends): who the envelope
    (MAIL FROM and RCPT TO, from ``envelopes.jsonl``) sends it to, its headers decoded, the
    first `text_lines` of its text and one line per other part; should the email package
    fail on it (an unknown charset, a malformed address), its first lines as written. Every
    line is printable."""
    try:
        return _readable(data, envelope, text_lines)
    except Exception:  # a preview never stops a dry run that wrote its files
        lines = data.decode("ascii", "replace").splitlines()[: text_lines * 2]
        return [shorten(printable(line), _LINE) for line in lines]


def _readable(data: bytes, envelope: Mapping[str, object] | None, text_lines: int) -> list[str]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    lines = []
    if envelope is not None:
        lines.append(_envelope(envelope))
    for name, value in message.items():
        if name.lower() not in _PLUMBING:
            lines.append(f"{name}: {shorten(' '.join(str(value).split()), 1000)}")
    body = message.get_body(preferencelist=("plain", "html"))
    lines.append("")
    if body is not None:
        text = body.get_content().splitlines()
        lines += [shorten(line, _LINE) for line in text[:text_lines]]
        if len(text) > text_lines:
            lines.append(f"--- ({plural(len(text) - text_lines, 'more line')} of text) ---")
    others = [
        _part(part) for part in message.walk() if part is not body and not part.is_multipart()
    ]
    if others:
        lines.append("")
        lines.append("Other parts:" if body is not None else "Parts:")
        lines += [f"  {line}" for line in others]
    return [printable(line) for line in lines]


def _envelope(envelope: Mapping[str, object]) -> str:
    recipients = [str(r) for r in cast(Sequence[object], envelope.get("rcpt_to", ()))]
    if len(recipients) <= _ALL_SHOWN:
        shown = ", ".join(recipients)
    else:
        shown = ", ".join(recipients[:_SHOWN_RECIPIENTS])
        shown += f" and {len(recipients) - _SHOWN_RECIPIENTS:,} more"
    return (
        f"Envelope: from {envelope.get('mail_from') or '<>'} to "
        f"{plural(len(recipients), 'recipient')} ({shown})"
    )


def _part(part: Message) -> str:
    """``attachment report.pdf (application/pdf, 2.1 MB)``, ``inline <logo.png> (image/png,
    1.8 KB)``, ``text/html, 3.4 KB``"""
    size = describe_size(_decoded_size(part))
    label = part.get_filename() or part.get("Content-ID")
    named = " ".join(str(word) for word in (part.get_content_disposition(), label) if word)
    kind = part.get_content_type()
    return f"{named} ({kind}, {size})" if named else f"{kind}, {size}"


def _decoded_size(part: Message) -> int:
    """The part's size once decoded; base64 (attachments) counted from its encoded length,
    not decoded: a large attachment is not copied again just to be measured."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return 0
    if part.get("Content-Transfer-Encoding", "").strip().lower() == "base64":
        data = "".join(payload.split())
        return len(data) * 3 // 4 - len(data) + len(data.rstrip("="))
    decoded = part.get_payload(decode=True)
    return len(decoded) if isinstance(decoded, bytes) else 0
