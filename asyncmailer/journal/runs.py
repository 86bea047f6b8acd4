"""The runs of a campaign: a small catalog beside its journals (``<id>.runs.json``), written
whole and atomically, under the campaign's lock. Each run has its own journal: the current
run's is ``<id>.journal.sqlite``; an earlier run's was renamed ``<id>.journal.sqlite.<run>``
when the next one began. The catalog names that new name before the rename and says a rename
is under way, so that a crash between the two is finished at the next start rather than
leaving the new run with the old run's journal."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JournalError
from .files import journal_path

__all__ = ["CATALOG_VERSION", "Catalog", "RunCatalog", "RunRecord"]

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


@dataclass(frozen=True, slots=True)
class Catalog:
    """What a runs file holds: the campaign file it was made for (None when unknown), the
    runs oldest first, and the journal name a rename under way gives the current journal."""

    source: str | None = None
    runs: list[RunRecord] = field(default_factory=list)
    setting_aside: str | None = None


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

    def load(self) -> Catalog:
        """What the file holds (empty when there is none).

        :raises JournalError: the file is not a catalog of this version.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Catalog()
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
        setting_aside = data.get("setting_aside")
        if not isinstance(setting_aside, str | None) or (
            setting_aside is not None and Path(setting_aside).name != setting_aside
        ):
            raise JournalError("a damaged runs file: setting_aside", path=self.path)
        return Catalog(source=data.get("source"), runs=runs, setting_aside=setting_aside)

    def save(
        self, source: str | None, runs: list[RunRecord], *, setting_aside: str | None = None
    ) -> None:
        """Write the catalog whole: a temporary file, flushed to disk, renamed over the old."""
        data: dict[str, Any] = {
            "version": CATALOG_VERSION,
            "campaign": self.campaign_id,
            "source": source,
            "runs": [asdict(run) for run in runs],
        }
        if setting_aside is not None:
            data["setting_aside"] = setting_aside
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

    def set_aside(self, name: str) -> None:
        """Rename the current journal (and its -wal, -shm) to `name`, so the next run starts a
        journal of its own. Each file only if it is still there and its new name is free: run
        again after a crash cut it short, it finishes what is left."""
        target = self.journal.with_name(name)
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.journal}{suffix}")
            moved = Path(f"{target}{suffix}")
            if source.exists() and not moved.exists():
                source.rename(moved)

    def journal_of(self, run: RunRecord) -> Path:
        return self.state_dir / run.journal
