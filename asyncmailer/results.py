"""What happened to each recipient: statuses, per-recipient results and the campaign summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import DeliveryError

__all__ = ["CampaignReport", "RecipientResult", "Status", "plural"]


def plural(count: int, word: str) -> str:
    """``1 message``, ``2 messages``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


class Status(StrEnum):
    """The answer for one recipient. Every feature reports with these words."""

    ACCEPTED = "accepted"  # the server took responsibility for delivery (250 after DATA)
    REFUSED = "refused"  # permanent failure (5xx): do not send again
    DEFERRED = "deferred"  # temporary failure (4xx, connection lost before the end of DATA)
    UNKNOWN = "unknown"  # the connection died after the final "." and before the reply
    SKIPPED = "skipped"  # never attempted; the message says why

    @property
    def is_final_success(self) -> bool:
        return self is Status.ACCEPTED


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome with the server's own code and text, when there was one."""

    recipient: str
    status: Status
    code: int | None = None
    message: str = ""
    attempts: int = 1

    def __str__(self) -> str:
        code = f" {self.code}" if self.code is not None else ""
        text = f" {self.message}" if self.message else ""
        return f"{self.status.value:<8} {self.recipient}{code}{text}"

    def as_row(self) -> dict[str, str | int | None]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "code": self.code,
            "message": self.message,
        }


@dataclass(slots=True)
class CampaignReport:
    """All results of a run, in the order they arrived."""

    results: list[RecipientResult] = field(default_factory=list)
    # Set when the run had to stop early (server unreachable, TLS refused, login failed).
    fatal: DeliveryError | None = None

    def add(self, results: Iterable[RecipientResult]) -> None:
        self.results.extend(results)

    @property
    def counts(self) -> Counter[Status]:
        return Counter(result.status for result in self.results)

    @property
    def all_accepted(self) -> bool:
        return (
            self.fatal is None
            and bool(self.results)
            and all(r.status is Status.ACCEPTED for r in self.results)
        )

    def summary(self) -> str:
        counts = self.counts
        parts = [f"{counts[s]} {s.value}" for s in Status if counts[s]]
        return f"{plural(len(self.results), 'recipient')}: " + (", ".join(parts) or "none")
