"""SMTP command bytes, and the last check before they reach the wire: no argument may carry a
CR, LF or NUL (a second command smuggled into the first)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import InputError

__all__ = ["DATA", "QUIT", "RSET", "UnsafeArgumentError", "envelope", "mail_from", "rcpt_to"]

DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
RSET = b"RSET\r\n"
_UNSAFE = re.compile(r"[\r\n\x00]")


class UnsafeArgumentError(InputError):
    """A command argument holds CR, LF or NUL: nothing of the command was written."""


def _check(*arguments: str) -> None:
    for argument in arguments:
        if _UNSAFE.search(argument):
            raise UnsafeArgumentError(
                f"refusing to send a command argument with CR, LF or NUL: {argument[:60]!r}"
            )


def mail_from(sender: str, size: int | None) -> str:
    """``MAIL FROM:<sender>``, with ``SIZE=`` (RFC 1870) when the server takes it.

    :raises UnsafeArgumentError: the address holds CR, LF or NUL.
    """
    _check(sender)
    return (
        f"MAIL FROM:<{sender}> SIZE={size}\r\n" if size is not None else f"MAIL FROM:<{sender}>\r\n"
    )


def rcpt_to(recipient: str) -> str:
    """``RCPT TO:<recipient>``.

    :raises UnsafeArgumentError: the address holds CR, LF or NUL.
    """
    _check(recipient)
    return f"RCPT TO:<{recipient}>\r\n"


def envelope(sender: str, recipients: Sequence[str], size: int | None) -> bytes:
    """MAIL, RCPT for everyone and DATA: one pipelined group (RFC 2920), built as one string.

    :raises UnsafeArgumentError: an address holds CR, LF or NUL.
    """
    if len(recipients) == 1:
        rcpt = rcpt_to(recipients[0])
    else:
        rcpt = "".join([rcpt_to(r) for r in recipients])
    return (mail_from(sender, size) + rcpt + "DATA\r\n").encode()
