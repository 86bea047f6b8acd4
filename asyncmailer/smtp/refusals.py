"""Which refusals are about the sender or the session, not the recipient (RFC 3463 enhanced
status codes, and the reply codes servers use for quotas, blocks and lost sessions). Pure.

A refusal of the sender is never a fact about each recipient: recording it as one would write
off a whole list because of a quota (docs/failures.md has the table this encodes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

from aiosmtplib import SMTPResponse, SMTPStatus

__all__ = [
    "Scope",
    "Stage",
    "enhanced_code",
    "is_throttling",
    "names_sender",
    "scope_of",
    "scope_of_rcpts",
]

# "Sender address rejected", "sender blocked", "sender domain refused": not "known senders".
_SENDER_REFUSED = re.compile(
    r"\bsender(?: address| domain)?\s*(?:is\s*)?(?:rejected|blocked|refused|denied|banned)"
)
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


class Stage(StrEnum):
    """The command a reply answers."""

    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    END = "the final '.'"


class Scope(StrEnum):
    """Whom a refusal is about."""

    RECIPIENT = "recipient"
    SENDER = "sender"
    SESSION = "session"


# 421 closing, 530 authentication required (aiosmtplib calls it access_denied), 535.
_SESSION_CODES = (SMTPStatus.domain_unavailable, SMTPStatus.access_denied, SMTPStatus.auth_failed)
# Enhanced codes (subject, detail) about the session: authentication and encryption.
_SESSION_DETAILS = {(7, 8), (7, 9), (7, 11), (7, 12)}
# About the sender, at any stage: its address, its sending volume, its authentication.
_SENDER_DETAILS = {
    (1, 7),  # bad sender's mailbox address syntax
    (1, 8),  # bad sender's system address
    (4, 5),  # mail system congestion: sending quotas (Gmail's 550 5.4.5 daily limit)
    (7, 23),  # SPF validation failed
    (7, 24),  # SPF validation error
    (7, 25),  # reverse DNS validation failed
    (7, 26),  # multiple authentication checks failed (DMARC)
    (7, 27),  # sender address has null MX
    (7, 28),  # mail flood detected: a rate limit (Gmail's 421 4.7.28)
}


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 code a reply's text starts with (``5.7.1 ...``), if any."""
    match = _ENHANCED.match(text.lstrip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def scope_of(reply: SMTPResponse, stage: Stage) -> Scope:
    """Whom one failed reply is about.

    - 421 at any point, 530 (authentication required), or an enhanced code of authentication
      or encryption (x.7.8, x.7.9, x.7.11, x.7.12), or x.7.0 with 530: the session.
    - Any refusal of MAIL FROM; an enhanced code naming the sender's address, quota, rate or
      authentication (x.1.7, x.1.8, x.4.5, x.7.23-x.7.28) at any stage; and a policy refusal
      (x.7.y) of DATA or of the message itself: the sender.
    - Everything else: the recipient (for a reply to DATA or the final ".", every recipient
      of the transaction).
    """
    code = reply.code
    if code in _SESSION_CODES:
        return Scope.SESSION
    detail = enhanced_code(reply.message)
    if detail is not None and detail[1:] in _SESSION_DETAILS:
        return Scope.SESSION
    if stage is Stage.MAIL:
        return Scope.SENDER
    if detail is not None:
        if detail[1:] in _SENDER_DETAILS:
            return Scope.SENDER
        if detail[1] == 7 and stage in (Stage.DATA, Stage.END):
            return Scope.SENDER
    return Scope.RECIPIENT


def scope_of_rcpts(replies: Sequence[SMTPResponse], *, every: bool) -> Scope:
    """Whom a transaction's failed RCPT replies are about, taken together: one reply about
    the sender or session makes them all so; the same policy refusal (x.7.y) to `every` one
    of two or more recipients is about the sender ("554 5.7.1 sender blocked")."""
    for reply in replies:
        scope = scope_of(reply, Stage.RCPT)
        if scope is not Scope.RECIPIENT:
            return scope
    if every and len(replies) >= 2 and all(r == replies[0] for r in replies):
        detail = enhanced_code(replies[0].message)
        if detail is not None and detail[1] == 7 and replies[0].code >= 400:
            return Scope.SENDER
    return Scope.RECIPIENT


def names_sender(reply: SMTPResponse, sender: str) -> bool:
    """A policy refusal (x.7.y) of a RCPT that is about the sender by its own words: it names
    the sender's address or says "sender" (Postfix rejects senders at RCPT time by default:
    ``554 5.7.1 <me@example.com>: Sender address rejected: Access denied``). With one
    recipient per transaction, this is how a blocked sender is told from a refused
    recipient."""
    detail = enhanced_code(reply.message)
    if detail is None or detail[1] != 7:
        return False
    text = reply.message.lower()
    return sender.lower() in text or _SENDER_REFUSED.search(text) is not None


def is_throttling(code: int | None, text: str) -> bool:
    """A reply that says "slower" rather than "no": 421 (closing, a server's own limits), 451
    (try again later: rate limits, greylisting) and any temporary policy code (4.7.x, such
    as Gmail's 421 4.7.28 or Postfix's 450 4.7.1 rate limit). What adaptive throttling
    (`run.throttle`) cuts the rate on."""
    if code is None or not 400 <= code < 500:
        return False
    if code in (SMTPStatus.domain_unavailable, 451):
        return True
    detail = enhanced_code(text)
    return detail is not None and detail[:2] == (4, 7)
