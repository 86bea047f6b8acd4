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
    "address_gone",
    "enhanced_code",
    "is_throttling",
    "names_sender",
    "refuses_helo",
    "relay_denied",
    "scope_of",
    "scope_of_rcpts",
]

# "Sender address rejected", "sender blocked", "sender domain refused": not "known senders".
_SENDER_REFUSED = re.compile(
    r"\bsender(?: address| domain)?\s*(?:is\s*)?(?:rejected|blocked|refused|denied|banned)"
)
# "Relay access denied" (Postfix), "Relaying denied" (Sendmail), "Mail relay denied", "not
# permitted to relay", "Unable to relay" (Exchange): the server does not take mail from this
# client for other domains, most often because it has not logged in.
_RELAY_DENIED = re.compile(
    r"\brelay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+(?:allowed|permitted))"
    r"|\bmail\s+relay\s+denied|\bnot\s+permitted\s+to\s+relay|\bunable\s+to\s+relay",
    re.IGNORECASE,
)
# "Client host rejected", "Client host [192.0.2.1] blocked using zen.spamhaus.org" (Postfix,
# Exchange), "Unverified Client host rejected" (its reverse name), "Helo command rejected"
# and "Helo command [name] blocked using ..." (Postfix): refusals of this client, its address or
# its EHLO name, that Postfix gives at RCPT time (smtpd_delay_reject) and so names each
# recipient in. Only as the reply's own words, at its start: a relay that quotes another
# server ("Recipient address rejected: ... said: 554 Client host rejected") refuses the
# recipient.
_CLIENT_REFUSED = re.compile(
    r"\s*(?:[245]\.\d{1,3}\.\d{1,3}\s+)?(?:<[^>]*>:\s*)?(?:service\s+unavailable;\s*)?"
    r"(?:(?:unverified\s+)?client\s+host\s*(?:\[[^\]]*\]\s*)?(?:rejected|blocked)"
    r"|(?P<helo>helo)\s+command\s*(?:\[[^\]]*\]\s*)?(?:rejected|blocked))",
    re.IGNORECASE,
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
      or encryption (x.7.8, x.7.9, x.7.11, x.7.12), or x.7.0 with 530, or a refusal that
      says it refuses the client host or its EHLO name: the session.
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
    if _CLIENT_REFUSED.match(reply.message):
        return Scope.SESSION
    if stage is Stage.MAIL:
        return Scope.SENDER
    if detail is not None:
        if detail[1:] in _SENDER_DETAILS:
            return Scope.SENDER
        if detail[1] == 7 and stage in (Stage.DATA, Stage.END):
            return Scope.SENDER
    return Scope.RECIPIENT


def relay_denied(reply: SMTPResponse) -> bool:
    """The server refuses to relay for this client ("554 5.7.1 <a@example.org>: Relay access
    denied"): a policy refusal (x.7.y) in those words."""
    detail = enhanced_code(reply.message)
    return detail is not None and detail[1] == 7 and _RELAY_DENIED.search(reply.message) is not None


def refuses_helo(reply: SMTPResponse) -> bool:
    """The server refuses the name this client gave in EHLO ("504 5.5.2 <mailer>: Helo
    command rejected: need fully-qualified hostname")."""
    match = _CLIENT_REFUSED.match(reply.message)
    return match is not None and match["helo"] is not None


def scope_of_rcpts(replies: Sequence[SMTPResponse], *, every: bool) -> Scope:
    """Whom a transaction's failed RCPT replies are about, taken together: one reply about
    the sender or session makes them all so; a refusal to relay to `every` recipient is
    about the session (it has not logged in: Postfix names each recipient in its reply); the
    same policy refusal (x.7.y) to `every` one of two or more recipients is about the sender
    ("554 5.7.1 sender blocked")."""
    for reply in replies:
        scope = scope_of(reply, Stage.RCPT)
        if scope is not Scope.RECIPIENT:
            return scope
    if every and replies and all(relay_denied(r) for r in replies):
        return Scope.SESSION
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


# Enhanced codes that say the address itself does not work, for good: bad destination mailbox
# (5.1.1), bad destination system (5.1.2), the domain accepts no mail (null MX, 5.1.10).
_GONE_DETAILS = {(1, 1), (1, 2), (1, 10)}
# What a 550 without an enhanced code says when the mailbox does not exist. Conservative on
# purpose: "mailbox unavailable" (RFC 5321's own text) is also what servers say for policy
# blocks and full mailboxes, and a wrong entry would stop mail to a working address for good.
_GONE_TEXT = re.compile(
    r"\b(?:user unknown|unknown user|no such (?:user|mailbox|recipient)"
    r"|(?:recipient|mailbox|user) unknown|unknown (?:recipient|mailbox)"
    r"|(?:user|mailbox|recipient|address) (?:not found|does not exist|doesn't exist))\b"
)


def address_gone(code: int | None, message: str) -> str | None:
    """The code (``550 5.1.1``, or ``550`` alone) of a recipient's refusal that says its
    address does not exist, for good (what the shared suppression store keeps), else None.

    5.1.1, 5.1.2 and 5.1.10 with a 5xx reply; a 550 without an enhanced code whose text says
    the user or mailbox is unknown. Not a policy refusal (5.7.x), a full mailbox, a sender's
    or a session's refusal (those are never recorded as a recipient's, see `scope_of`)."""
    if code is None or not 500 <= code < 600:
        return None
    detail = enhanced_code(message)
    if detail is not None:
        if detail[0] == 5 and detail[1:] in _GONE_DETAILS:
            return f"{code} {detail[0]}.{detail[1]}.{detail[2]}"
        return None
    if code == 550 and _GONE_TEXT.search(message.lower()):
        return "550"
    return None


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
