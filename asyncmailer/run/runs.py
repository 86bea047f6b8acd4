"""The runs of a campaign in its state folder: which run a send belongs to (the rule is
`run_choice.RunRequest`; an edited campaign is noticed by a fingerprint of each of its
parts), the campaign's run lock, and the record of each run at its start and end."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import socket
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ..config import Campaign
from ..errors import JournalError
from ..journal.files import journal_path
from ..journal.reader import JournalReader
from ..journal.runs import RunCatalog, RunRecord
from ..ledger import Ledger
from ..run_choice import LEFT, RunRequest
from ..schedule import Occurrence

__all__ = ["RunBook", "RunList", "Runs", "fingerprint"]


class RunBook(Protocol):
    """A campaign's runs as a send or a scheduler uses them: `Runs` (the state folder) or
    `run.shared_runs.SharedRuns` (the shared ledger)."""

    campaign: Campaign

    @property
    def changed(self) -> list[str]:
        """What changed since the latest run, as `begin()` saw."""

    @property
    def began(self) -> bool:
        """`begin()` began a new run (else the latest went on, or another worker's)."""

    @property
    def runs(self) -> list[RunRecord]: ...

    @property
    def latest(self) -> RunRecord | None: ...

    async def refresh(self) -> None:
        """Read the runs again (others may have begun or ended one)."""

    async def begin(
        self,
        *,
        new_run: bool = False,
        keep_changes: bool = False,
        reopen: bool = False,
        occurrence: Occurrence | None = None,
        current: dict[str, str] | None = None,
    ) -> RunRecord: ...

    async def sent_today(self, day: str) -> int:
        """Recipients the campaign's earlier runs tried on `day`, not counted by the ledger."""

    async def end(self, record: RunRecord, *, stopped: bool) -> RunRecord: ...

    def ledger(
        self, record: RunRecord, *, lease: float
    ) -> AbstractAsyncContextManager[Ledger] | None:
        """The ledger run `record` is sent from, for this worker (its claims leased for
        `lease` seconds); None: the campaign's own journal, which the run opens."""


def _digest(*pieces: object) -> str:
    return hashlib.sha256(repr(pieces).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _file(path: Path | None, content: bool = False) -> tuple[object, ...]:
    """A file by name, size and modification time (not its content: a list may be large);
    with `content`, by name and a digest of its bytes (the same on every host)."""
    if path is None:
        return ()
    try:
        if content:
            with path.open("rb") as handle:
                return (path.name, hashlib.file_digest(handle, "sha256").hexdigest())
        info = path.stat()
    except OSError:
        return (path.name, None)
    return (path.name, info.st_size, info.st_mtime_ns)


def fingerprint(campaign: Campaign, *, content: bool = False) -> dict[str, str]:
    """A digest of each part of the campaign (blocking: it reads the message file). With
    `content` (a shared ledger, whose workers are on hosts with other paths and times), the
    list and attachments count by their bytes, not their modification times."""
    attachments: list[tuple[object, ...]] = []
    if campaign.attachments_dir is not None and campaign.attachments_dir.is_dir():
        attachments = [_file(p, content) for p in sorted(campaign.attachments_dir.iterdir())]
    return {
        "subject": _digest(campaign.subject, str(campaign.sender)),
        "message": _digest(
            campaign.message_file.read_bytes(),
            _file(campaign.text_file, content),
            campaign.personalize,
        ),
        "attachments": _digest(attachments),
        "recipients": _digest([str(m) for m in (*campaign.to, *campaign.cc, *campaign.bcc)]),
        # How the list is read makes it another list as much as its bytes do: another column
        # (or delimiter, or encoding) names other addresses.
        "list": _digest(
            _file(campaign.recipients_file, content),
            campaign.group_size,
            campaign.recipients_column,
            campaign.name_column,
            campaign.recipients_encoding,
            campaign.recipients_delimiter,
            campaign.timezone_column,
        ),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunList:
    """The runs as a `RunBook` last read them (`_runs`, oldest first): what both kinds
    keep alike."""

    _runs: list[RunRecord]

    @property
    def runs(self) -> list[RunRecord]:
        return list(self._runs)

    @property
    def latest(self) -> RunRecord | None:
        return self._runs[-1] if self._runs else None


class Runs(RunList):
    """The runs of one campaign, for one send or one scheduler: `begin()` names the run this
    send belongs to (and holds the campaign's run lock until `close()`), `end()` records how
    it ended."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.catalog = RunCatalog(campaign.state_dir, campaign.id)
        self._lock: int | None = None
        self._source: str | None = None
        self._runs: list[RunRecord] = []
        self.changed: list[str] = []  # what changed since the latest run, as `begin()` saw
        self.began = False  # `begin()` began a new run (else the latest goes on)

    def __repr__(self) -> str:
        return f"<Runs {self.campaign.id} runs={len(self._runs)}>"

    async def __aenter__(self) -> Runs:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> None:
        """Take the run lock (a scheduler or a send at a time) and read the catalog.

        :raises JournalError: another send or scheduler holds it (named in the lock file), or
            the catalog was made for another campaign of the same name.
        """
        path = self.catalog.path.with_name(f"{self.catalog.path.name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise JournalError(f"cannot create the run lock: {err.strerror}", path=path) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
            os.close(fd)
            raise JournalError(
                f"this campaign is being sent or scheduled by {holder}; wait for it, or stop it",
                path=path,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock = fd
        try:
            catalog = self.catalog.load()
            self._source, self._runs = catalog.source, catalog.runs
            if catalog.setting_aside is not None:  # a crash came while a new run began
                self.catalog.set_aside(catalog.setting_aside)
                self.catalog.save(self._source, self._runs)
            # Where the campaign file is, seen from the state folder: the same when the
            # project moves whole, different for another campaign of the same file name.
            here = os.path.relpath(
                self.campaign.source.resolve(), self.campaign.state_dir.resolve()
            )
            if self.campaign.campaign_id is None and self._source not in (None, here):
                raise JournalError(
                    f"this state folder holds the runs of another campaign named "
                    f"{self.campaign.id!r} ({self._source}); give the other campaign a "
                    "state_dir of its own",
                    path=self.catalog.path,
                )
            name = self.campaign.source.name
            by_name = journal_path(self.campaign.state_dir, name)
            if (
                self.campaign.campaign_id is not None
                and not self._runs
                and not self.catalog.journal.exists()
                and by_name.exists()
                # ...and it is this campaign's (or nobody can tell): not another of its name
                and RunCatalog(self.campaign.state_dir, name).load().source in (None, here)
            ):
                raise JournalError(
                    f"this campaign's runs are still named after its file: rename "
                    f"{name}.journal.sqlite* and {name}.runs.json to "
                    f"{self.campaign.id}.journal.sqlite* and {self.campaign.id}.runs.json, or "
                    "remove the campaign key, so that its recipients are not sent again",
                    path=by_name,
                )
            self._source = self._source or here
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def refresh(self) -> None:
        """Nothing to read again: while this holds the run lock, nobody else writes the
        catalog."""

    def ledger(self, record: RunRecord, *, lease: float) -> None:
        """None: the run opens the campaign's journal itself (there are no leases)."""
        return None

    async def begin(
        self,
        *,
        new_run: bool = False,
        keep_changes: bool = False,
        reopen: bool = False,
        occurrence: Occurrence | None = None,
        current: dict[str, str] | None = None,
    ) -> RunRecord:
        """The run this send goes to, as `RunRequest.choose` decides (a new one has a journal
        of its own: the latest run's is set aside).

        :raises NothingToSendError: the latest run finished, and no new one was asked for.
        :raises InputError: the latest run is unfinished and the campaign changed since it
            began (unless `keep_changes`).

        `current` is the campaign's fingerprint as its message was built (else read now).
        """
        if current is None:
            current = await asyncio.to_thread(fingerprint, self.campaign)
        runs = list(self._runs)
        if not runs and await asyncio.to_thread(self.catalog.journal.exists):
            runs = [await self._adopt(current)]  # a journal from before runs existed
        request = RunRequest(
            campaign=self.campaign.id,
            current=current,
            new_run=new_run,
            keep_changes=keep_changes,
            reopen=reopen,
            occurrence=occurrence,
            source=self.campaign.source,
        )
        choice = request.choose(runs, journal=self.catalog.journal.name)
        self.changed, self.began = choice.changed, choice.new
        if not choice.new:
            await self._save([*runs[:-1], choice.record])
            return choice.record
        latest = runs[-1] if runs else None
        if latest is None or not await asyncio.to_thread(self.catalog.journal.exists):
            await self._save([*runs, choice.record])
            return choice.record
        # The catalog names the earlier run's new journal name, and says the rename is under
        # way, before the rename: a crash between the two is finished at the next open
        # (before, it left the new run with the old run's journal: an occurrence sent to
        # nobody).
        aside = self.catalog.set_aside_name(latest)
        runs[-1] = replace(latest, journal=aside)
        await self._save([*runs, choice.record], setting_aside=aside)
        await asyncio.to_thread(self.catalog.set_aside, aside)
        await self._save(self._runs)
        return choice.record

    async def sent_today(self, day: str) -> int:
        """Recipients the campaign's earlier runs tried on `day` (the daily quota is the
        campaign's, not a run's)."""
        total = 0
        for run in self._runs[:-1]:
            path = self.catalog.journal_of(run)
            if await asyncio.to_thread(path.exists):
                total += await JournalReader(path).sent_on(day)
        return total

    async def end(self, record: RunRecord, *, stopped: bool) -> RunRecord:
        """Record how the run ended: finished when no recipient is left to send (and it was
        not stopped early); its counts either way."""
        counts = await JournalReader(self.catalog.journal).counts()
        left = sum(counts[state] for state in LEFT)
        done = replace(
            record,
            counts={str(state): count for state, count in sorted(counts.items())},
            ended=_now() if not left and not stopped else None,
        )
        await self._save([done if r.id == record.id else r for r in self._runs])
        return done

    async def _adopt(self, current: dict[str, str]) -> RunRecord:
        """A journal made before runs were recorded becomes the campaign's first run (its
        content unknown: taken as the current one)."""
        counts = await JournalReader(self.catalog.journal).counts()
        stamp = datetime.fromtimestamp(self.catalog.journal.stat().st_mtime, UTC)
        record = RunRecord(
            id=stamp.strftime("%Y%m%dT%H%M%SZ"),
            started=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            journal=self.catalog.journal.name,
            fingerprint=current,
            # Unfinished: a send resumes it as before (new list rows sent, known ones not).
            ended=None,
            counts={str(state): count for state, count in counts.items()},
        )
        await self._save([record])
        return record

    async def _save(self, runs: list[RunRecord], *, setting_aside: str | None = None) -> None:
        try:
            await asyncio.to_thread(
                self.catalog.save, self._source, runs, setting_aside=setting_aside
            )
        except OSError as err:
            raise JournalError(
                f"cannot write the runs of this campaign: {err.strerror}", path=self.catalog.path
            ) from err
        self._runs = runs
