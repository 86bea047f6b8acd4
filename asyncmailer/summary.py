"""A run's summary: the counts by status, failures by code class, this send's duration and
rate, as lines printed at the end and as JSON beside the journal
(``<state_dir>/<campaign>.<run>.summary.json``, written whole and atomically)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .results import CampaignReport, Status, plural

__all__ = ["SUMMARY_VERSION", "summary_document", "summary_lines", "summary_path", "write_summary"]

SUMMARY_VERSION = 1


def summary_path(state_dir: Path, campaign_id: str, run_id: str) -> Path:
    """``<state_dir>/<campaign id>.<run id>.summary.json``: beside the run's journal."""
    return state_dir / f"{campaign_id}.{run_id}.summary.json"


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _classes(report: CampaignReport, status: Status) -> dict[str, int]:
    found = {name: n for (s, name), n in report.classes.items() if s is status}
    return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))


def summary_document(
    report: CampaignReport, *, campaign: str, run: str | None, finished: bool
) -> dict[str, Any]:
    """The summary as JSON data (docs/journal.md: the run summary)."""
    duration = max(report.ended - report.started, 0.0)
    this_run = report.this_run
    answered = sum(n for s, n in this_run.items() if s is not Status.DEFERRED)
    return {
        "version": SUMMARY_VERSION,
        "campaign": campaign,
        "run": run,
        "journal": str(report.journal) if report.journal is not None else None,
        "started": _stamp(report.started),
        "ended": _stamp(report.ended),
        "finished": finished,
        "recipients": report.total,
        "statuses": {status.value: report.counts[status] for status in Status},
        "refused_by_class": _classes(report, Status.REFUSED),
        "deferred_by_class": _classes(report, Status.DEFERRED),
        "duplicates": report.duplicates,
        "bad_rows": len(report.bad_rows),
        "this_send": {
            "duration_seconds": round(duration, 3),
            "messages": report.messages,
            "statuses": {status.value: this_run[status] for status in Status},
            "recipients_per_second": round(answered / duration, 1) if duration else 0.0,
            "messages_per_second": round(report.messages / duration, 1) if duration else 0.0,
        },
    }


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The summary as the lines printed at the end of a run."""
    statuses: dict[str, int] = document["statuses"]
    send = document["this_send"]
    head = f"run {document['run']}" if document.get("run") else "run"
    lines = [
        f"{head}: this send took {send['duration_seconds']:.1f} s, "
        f"{plural(send['messages'], 'message')}, {send['recipients_per_second']:,.1f} "
        "recipients/s; the run's recipients:"
    ]
    by_class = {
        Status.REFUSED.value: document["refused_by_class"],
        Status.DEFERRED.value: document["deferred_by_class"],
    }
    for status in Status:
        count = statuses[status.value]
        if not count and status is not Status.ACCEPTED:
            continue
        line = f"  {count:>9,}  {status.value}"
        classes = by_class.get(status.value)
        if classes:
            line += " (" + ", ".join(f"{name}: {n:,}" for name, n in classes.items()) + ")"
        lines.append(line)
    return lines


def write_summary(path: Path, document: dict[str, Any]) -> None:
    """Write the summary whole: a temporary file, flushed to disk, renamed over the old one.
    Blocking: call it in a thread.

    :raises OSError: it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
