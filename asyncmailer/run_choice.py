"""Which run a send, worker or scheduled occurrence belongs to: the one rule that both run
stores apply (the SQLite catalog, `run.runs.Runs`, and the shared ledger, `pg.runs.PgRuns`).
Pure: the store reads the campaign's runs, this decides, the store writes what it decided.

The latest run goes on when it is unfinished (or when asked to reopen it: to resend unknown or
refused recipients); a new one begins when asked, at a new occurrence of a schedule, or when
there is none. A finished run whose list alone changed reopens: the new addresses are sent,
the known ones are not. An unfinished run whose campaign changed goes on only when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from .errors import InputError, NothingToSendError
from .journal.runs import RunRecord
from .ledger import JournalState
from .results import plural
from .schedule import Occurrence

__all__ = ["LEFT", "PARTS", "RunChoice", "RunRequest", "only_deferred"]

# What makes a campaign "the same" across runs, by part (the names say what changed).
PARTS = ("subject", "message", "attachments", "recipients", "list")
# The states of recipients a run has not settled yet: a run with any is unfinished.
LEFT = (JournalState.PENDING, JournalState.DEFERRED, JournalState.INFLIGHT, JournalState.DATA)


def only_deferred(run: RunRecord) -> bool:
    """The run ended with nothing left to send but recipients still deferred."""
    counts = run.counts or {}
    waiting = (JournalState.PENDING, JournalState.INFLIGHT, JournalState.DATA)
    return run.counts is not None and not any(counts.get(str(s), 0) for s in waiting)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(stamp: str) -> str:
    return (
        datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        .astimezone()
        .strftime("%Y-%m-%d %H:%M %Z")
    )


@dataclass(frozen=True, slots=True)
class RunChoice:
    """What `RunRequest.choose` decided: `record` goes on (`new` false: the latest run, its
    fingerprint and covered occurrences brought up to date) or begins (`new`)."""

    record: RunRecord
    new: bool
    changed: list[str]  # the parts changed since the latest run

    @property
    def reload_list(self) -> bool:
        """An unfinished run goes on with a changed list: the list is read again."""
        return not self.new and bool({"list", "recipients"} & set(self.changed))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequest:
    """What a send asks of the campaign's runs: its flags, and the campaign as it is now
    (`current`, a fingerprint of each part). `source` is named in errors."""

    campaign: str
    current: dict[str, str] = field(default_factory=dict)
    new_run: bool = False
    keep_changes: bool = False
    reopen: bool = False
    occurrence: Occurrence | None = None
    source: Path | None = None

    def choose(
        self, runs: Sequence[RunRecord], *, journal: str, now: datetime | None = None
    ) -> RunChoice:
        """The run this send goes to, given the campaign's runs (oldest first); a new run's
        journal is named `journal`.

        :raises NothingToSendError: the latest run finished, and no new one was asked for.
        :raises InputError: the latest run is unfinished and the campaign changed since it
            began (unless `keep_changes`: then the rest goes with the new content).
        """
        latest = runs[-1] if runs else None
        current, occurrence = self.current, self.occurrence
        changed = [p for p in PARTS if latest and latest.fingerprint.get(p) != current.get(p)]
        new_run, reopen, keep_changes = self.new_run, self.reopen, self.keep_changes
        if occurrence is not None and latest is not None and latest.id == occurrence.run_id:
            new_run = False  # this occurrence's run: go on with it, whatever its state
            reopen = reopen or not latest.finished
        elif occurrence is not None and (
            latest is None or latest.finished or only_deferred(latest)
        ):
            new_run = True  # a run left with only deferred recipients does not hold back the next
        if latest is not None and not new_run:
            if latest.finished and changed and set(changed) <= {"list", "recipients"}:
                reopen = keep_changes = True  # recipients added: the known ones are skipped
            if latest.finished and not reopen:
                raise NothingToSendError(self._sent_already(latest, changed))
            if changed and not keep_changes:
                state = "was sent" if latest.finished else "is not finished"
                raise InputError(
                    f"run {latest.id} of campaign {self.campaign} {state}, and the "
                    f"campaign changed since it began ({', '.join(changed)}). To send the rest "
                    "with the new content: add --continue; to start over, sending the new "
                    "version to everyone: add --new-run",
                    path=self.source,
                )
            covers = list(latest.covers)
            if occurrence is not None and occurrence.run_id not in (latest.id, *covers):
                covers.append(occurrence.run_id)
            record = replace(latest, ended=None, counts=None, fingerprint=current, covers=covers)
            return RunChoice(record, new=False, changed=changed)
        moment = now or datetime.now(UTC)
        run_id = occurrence.run_id if occurrence else moment.strftime("%Y%m%dT%H%M%SZ")
        taken = {r.id for r in runs}
        base, number = run_id, 1
        while run_id in taken:  # two runs begun in one second
            number += 1
            run_id = f"{base}-{number}"
        record = RunRecord(
            id=run_id,
            started=_stamp(moment),
            journal=journal,
            fingerprint=current,
            scheduled=_stamp(occurrence.at) if occurrence else None,
        )
        return RunChoice(record, new=True, changed=changed)

    def _sent_already(self, run: RunRecord, changed: list[str]) -> str:
        counts = run.counts or {}
        accepted = counts.get(JournalState.ACCEPTED, 0)
        total = sum(counts.values())
        sent = (
            f"campaign {self.campaign} was sent on {_when(run.ended or run.started)} "
            f"(run {run.id}): {accepted:,} of {plural(total, 'recipient')} accepted"
        )
        if changed:
            return (
                f"{sent}; it changed since ({', '.join(changed)}). To send the new version "
                "to everyone: add --new-run"
            )
        return f"{sent}. Nothing to send; to send it again to everyone: add --new-run"
