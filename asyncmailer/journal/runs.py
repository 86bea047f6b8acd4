"""The runs of a campaign: a small catalog beside its journals (``<id>.runs.json``), written
whole and atomically, under the campaign's lock. Each run has its own journal: the current
run's is ``<id>.journal.sqlite``; an earlier run's was renamed ``<id>.journal.sqlite.<run>``
when the next one began."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import JournalError
from .files import journal_path

__all__ = ["CATALOG_VERSION", "RunCatalog", "RunRecord"]

CATALOG_VERSION = 1


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: when it was scheduled for, began and ended (ISO 8601, UTC), what it sent (a
    fingerprint of each part of the campaign), its journal file and its final counts."""

    id: str
    started: str
    journal: str
    fingerprint: dict[str, str] = field(default_factory=dict)
    scheduled: str | None = None
    ended: str | None = None
    counts: dict[str, int] | None = None
    # Later occurrences of a schedule that this run went on at (it was unfinished then):
    # they were served by it, and are not run again.
    covers: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.ended is not None


class RunCatalog:
    """The runs of one campaign in `state_dir`. Reads and writes block: call them in a
    thread (`asyncio.to_thread`), and only while holding the campaign's journal lock."""

    def __init__(self, state_dir: Path, campaign_id: str) -> None:
        self.state_dir = state_dir
        self.campaign_id = campaign_id
        self.path = state_dir / f"{campaign_id}.runs.json"
        self.journal = journal_path(state_dir, campaign_id)

    def __repr__(self) -> str:
        return f"<RunCatalog {self.path}>"

    def load(self) -> tuple[str | None, list[RunRecord]]:
        """The campaign file it was made for (None when unknown), and its runs, oldest first.

        :raises JournalError: the file is not a catalog of this version.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, []
        except (OSError, ValueError) as err:
            raise JournalError(
                f"cannot read the runs of this campaign: {err}", path=self.path
            ) from err
        if not isinstance(data, dict) or data.get("version") != CATALOG_VERSION:
            raise JournalError(
                "not a runs file of this asyncmailer (set it aside to start afresh)",
                path=self.path,
            )
        try:
            runs = [RunRecord(**run) for run in data["runs"]]
        except (KeyError, TypeError) as err:
            raise JournalError(f"a damaged runs file: {err}", path=self.path) from err
        return data.get("source"), runs

    def save(self, source: str | None, runs: list[RunRecord]) -> None:
        """Write the catalog whole: a temporary file, flushed to disk, renamed over the old."""
        data: dict[str, Any] = {
            "version": CATALOG_VERSION,
            "campaign": self.campaign_id,
            "source": source,
            "runs": [asdict(run) for run in runs],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.state_dir, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def set_aside_name(self, run: RunRecord) -> str:
        """The name `set_aside()` gives the current journal for `run`."""
        return f"{self.journal.name}.{run.id}"

    def set_aside(self, run: RunRecord) -> RunRecord:
        """Rename the current journal (and its -wal, -shm) after `run`, so the next run
        starts a journal of its own. Returns the run with its journal's new name."""
        target = self.journal.with_name(self.set_aside_name(run))
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.journal}{suffix}")
            if source.exists():
                source.rename(f"{target}{suffix}")
        return replace(run, journal=target.name)

    def journal_of(self, run: RunRecord) -> Path:
        return self.state_dir / run.journal
