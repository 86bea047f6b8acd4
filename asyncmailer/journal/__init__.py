"""The SQLite journal: the embedded implementation of the `ledger.Ledger` seam.

`schema` (tables, bulk statements, the oldest SQLite), `writer` (the group-commit thread),
`sqlite` (the ledger operations), `reader` (reading back), `files` (path, lock), `runs` (the
catalog of runs).
"""

from .files import journal_path, probe_lock
from .reader import JournalReader
from .sqlite import Journal

__all__ = ["Journal", "JournalReader", "journal_path", "probe_lock"]
