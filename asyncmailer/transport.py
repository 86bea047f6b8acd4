"""The Transport seam: what carries a message to its recipients and says what became of each.

The dispatcher (`run.dispatcher`) knows nothing of SMTP: it borrows a `Connection` from a
`Transport`, hands it one transaction at a time and reads the per-recipient results back.
`smtp.pool.SessionPool` is the SMTP implementation; `dryrun.EmlTransport` writes `.eml` files.
Adding a transport is one module implementing these two interfaces, plus its config key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .attachments import Part
from .errors import RefusedError
from .results import RecipientResult

__all__ = ["Commit", "Connection", "Envelope", "Sent", "Transaction", "Transport"]

# Awaited before the end of the message is written (the ledger's commit point): once it has
# returned, the message may be delivered; if it raises, the end is never written.
Commit = Callable[[], Awaitable[None]]


class Envelope(NamedTuple):
    """Who the message is from and whom it goes to (SMTP's MAIL FROM and RCPT TO), and the
    message's envelope id for delivery status notifications (RFC 3461 ENVID; docs/journal.md
    has its form), sent where the server offers DSN."""

    sender: str
    recipients: Sequence[str]
    envid: str | None = None


class Transaction(NamedTuple):
    """One message to send: its envelope and its content as `message.MessageTemplate` renders
    it (parts written one after the other, CRLF line ends, dot-stuffed, no final ``.``)."""

    envelope: Envelope
    message: Sequence[Part]


@dataclass(frozen=True, slots=True)
class Sent:
    """How one transaction ended.

    `results` has one entry per envelope recipient, in order. `then_sent` says the `then`
    transaction passed to `send()` has already begun on this connection (its envelope went out
    with this message's end): the next `send()` on the connection must be for it. When False,
    it has not been tried at all and may go anywhere. `reusable` says the connection can carry
    another transaction. `refusal` is set when the server refused the sender or the session
    rather than a recipient: then `results` are no facts about the recipients (they stay
    as they were), only what the server said to each.
    """

    results: list[RecipientResult]
    then_sent: bool = False
    reusable: bool = True
    refusal: RefusedError | None = None


class Connection(Protocol):
    """A borrowed connection: one transaction at a time."""

    @property
    def pipelines(self) -> bool:
        """It can begin the next transaction with the end of this one (`send(then=...)`)."""
        ...

    async def send(
        self, transaction: Transaction, *, commit: Commit | None = None, then: Transaction | None
    ) -> Sent:
        """Run one transaction. Never raises for a refusal or a lost connection: those are
        results (`refused`, `deferred`, or `unknown` once the end of the message may have
        reached the server)."""
        ...


class Transport(Protocol):
    """Lends connections, at most so many at once."""

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """Borrow a connection, opening one when none is idle.

        :raises DeliveryError: it cannot be opened (`ConnectError`, `TLSRequiredError`,
            `AuthError`).
        """
        ...

    async def close(self) -> None:
        """Close every connection (politely where it is idle)."""
        ...
