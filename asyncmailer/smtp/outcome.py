"""One mail transaction's outcome for each recipient, from the server's replies (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from aiosmtplib import SMTPResponse, SMTPStatus

from ..results import RecipientResult, Status
from .refusals import Scope, Stage, names_sender, scope_of, scope_of_rcpts

__all__ = ["ACCEPTED_RCPT", "AFTER_END", "Transaction", "classify", "describe"]

AFTER_END = "after the final '.'"
ACCEPTED_RCPT = (SMTPStatus.completed, SMTPStatus.will_forward)


def classify(code: int) -> Status:
    """The status a failed reply code gives its recipients: 5xx is permanent; 4xx, and a
    reply of the wrong kind (250 to DATA, 354 to RCPT: a server out of step, which says
    nothing about the recipient), temporary."""
    return Status.REFUSED if 500 <= code < 600 else Status.DEFERRED


def describe(err: BaseException) -> str:
    """An exception as one line of text."""
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def _clean(text: str) -> str:
    return " ".join(text.split())


def _result(
    recipient: str, status: Status, reply: SMTPResponse, relay: str, prefix: str = ""
) -> RecipientResult:
    return RecipientResult(
        recipient, status, reply.code, prefix + _clean(reply.message), relay=relay
    )


class Transaction:
    """The per-recipient bookkeeping of one mail transaction; `phase` says where it is, so
    that a lost connection is `deferred` before the final "." and `unknown` after it.
    `refusal` is set when a reply refused the sender or the session (`refusals`): then no
    result is a fact about its recipient."""

    __slots__ = (
        "accepted",
        "ended",
        "failed",
        "outcome",
        "phase",
        "recipients",
        "refusal",
        "refused",
        "relay",
        "sender",
    )

    def __init__(self, recipients: Sequence[str], sender: str = "", relay: str = "") -> None:
        self.recipients = recipients
        self.sender = sender
        self.relay = relay  # the relay's name, in every result (the report's column)
        self.accepted: list[str] = []
        self.refused: list[SMTPResponse] = []  # the failed RCPT replies
        self.outcome: dict[str, RecipientResult] = {}
        self.phase = "before MAIL FROM"
        self.failed = False
        self.ended = False  # the reply to the final "." came: the transaction is over
        self.refusal: tuple[Scope, Stage, SMTPResponse] | None = None

    def _refuse(self, reply: SMTPResponse, stage: Stage, scope: Scope | None = None) -> None:
        scope = scope or scope_of(reply, stage)
        if scope is not Scope.RECIPIENT and self.refusal is None:
            self.refusal = (scope, stage, reply)

    def mail(self, reply: SMTPResponse) -> None:
        """The reply to MAIL FROM: a refusal is the sender's (or the session's)."""
        if reply.code != SMTPStatus.completed:
            self._refuse(reply, Stage.MAIL)

    def rcpt(self, recipient: str, reply: SMTPResponse, mail: SMTPResponse) -> None:
        if mail.code != SMTPStatus.completed:
            # With PIPELINING the RCPT replies then only echo the refused MAIL FROM.
            self.outcome[recipient] = _result(
                recipient, classify(mail.code), mail, self.relay, "sender: "
            )
            self.failed = True
            self._refuse(mail, Stage.MAIL)
        elif reply.code in ACCEPTED_RCPT:
            self.accepted.append(recipient)
        else:
            self.outcome[recipient] = _result(recipient, classify(reply.code), reply, self.relay)
            self.refused.append(reply)
            if self.sender and names_sender(reply, self.sender):
                self._refuse(reply, Stage.RCPT, Scope.SENDER)
            elif (scope := scope_of(reply, Stage.RCPT)) is not Scope.RECIPIENT:
                self._refuse(reply, Stage.RCPT, scope)  # known before the server may close

    def rcpts_done(self) -> None:
        """Every RCPT reply is in: are the refusals, taken together, about the sender?"""
        if self.refused and self.refusal is None:
            scope = scope_of_rcpts(self.refused, every=not self.accepted)
            self._refuse(self.refused[0], Stage.RCPT, scope)

    def data_started(self, start: SMTPResponse) -> bool:
        if start.code == SMTPStatus.start_input:
            return True
        self.failed = True
        self._refuse(start, Stage.DATA)
        for recipient in self.accepted:
            self.outcome.setdefault(
                recipient, _result(recipient, classify(start.code), start, self.relay)
            )
        return False

    def finish(self, end: SMTPResponse) -> None:
        self.ended = True
        accepted = end.code == SMTPStatus.completed
        if accepted:
            status = Status.ACCEPTED
        elif 400 <= end.code < 600:
            status = classify(end.code)
        else:  # 354 or 220 to the final ".": no answer to it; the message may have gone
            status = Status.UNKNOWN
        text = _clean(end.message)
        for recipient in self.accepted:
            self.outcome[recipient] = RecipientResult(
                recipient, status, end.code, text, relay=self.relay
            )
        if not accepted:
            self.failed = True
            self._refuse(end, Stage.END)

    def connection_lost(self, err: BaseException) -> None:
        lost = self.phase == AFTER_END
        status = Status.UNKNOWN if lost else Status.DEFERRED
        note = (
            "connection lost after the message was sent and before the server's reply: "
            "it may or may not have been accepted"
            if lost
            else f"connection lost {self.phase}: not delivered ({describe(err)})"
        )
        for recipient in self.recipients:
            if recipient not in self.outcome:
                self.outcome[recipient] = RecipientResult(
                    recipient, status, None, note, relay=self.relay
                )

    def not_sent(self, why: str) -> None:
        """The transaction ends before its message: each recipient the server took is not
        sent (`deferred`: what the run makes of it follows `refusal`)."""
        for recipient in self.accepted:
            self.outcome.setdefault(
                recipient,
                RecipientResult(
                    recipient, Status.DEFERRED, None, f"not sent: {why}", relay=self.relay
                ),
            )

    def results(self) -> list[RecipientResult]:
        return [self.outcome[r] for r in self.recipients]
