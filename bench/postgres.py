"""The PostgreSQL ledger rows' server: the tests' private one (tests/postgres.py: Debian's
binaries, a temporary data folder, a free loopback port), a fresh database per row, the
server's CPU time, and the moment a run's list is all loaded."""

from __future__ import annotations

import importlib.util
import itertools
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_HELPER = REPO / "tests" / "postgres.py"
_DATABASES = itertools.count(1)
_TICKS = os.sysconf("SC_CLK_TCK")


def _helper() -> ModuleType:
    """tests/postgres.py by its path: the one copy of how a private server is started (the
    bench runs as a script, so the repository is not on sys.path)."""
    spec = importlib.util.spec_from_file_location("asyncmailer_bench_pg", _HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start() -> tuple[Any, str]:
    """(a started server, "") or (None, why the PostgreSQL rows cannot run)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed: pip install -e '.[postgresql]'"
    helper = _helper()
    try:
        server = helper.PgServer()
        server.start()
    except helper.PgUnavailable as err:
        return None, f"no PostgreSQL server: {err}"
    return server, ""


def new_database(server: Any) -> str:
    """A fresh database of its own for one row: its URL (with the password)."""
    import psycopg

    name = f"bench{next(_DATABASES)}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return str(server.url(name))


def _ticks(pid: int, *, children: bool) -> int:
    """utime+stime of `pid` (and, with `children`, of its children it has reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14 to 17
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children else 0)


def cpu_seconds(server: Any) -> float:
    """CPU time used so far by the whole server: the postmaster, the backends it reaped (every
    session that ended) and its live processes (checkpointer, walwriter, open sessions)."""
    postmaster = int((Path(server.data) / "postmaster.pid").read_text().split()[0])
    total = _ticks(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == postmaster:
                total += _ticks(int(entry.name), children=False)
        except (OSError, ValueError):
            continue  # it ended meanwhile: reaped, so counted in the postmaster's children
    return total / _TICKS


def wait_loaded(url: str, timeout: float, poll: float = 0.05) -> bool:
    """Block until a run in this database has its list all loaded (its `load:done` mark),
    True; False after `timeout` s."""
    import psycopg

    deadline = time.monotonic() + timeout
    query = "SELECT 1 FROM asyncmailer_meta WHERE key = 'load:done' AND value <> 0"
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            try:
                if conn.execute(query).fetchone() is not None:
                    return True
            except psycopg.errors.UndefinedTable:
                pass  # the first worker has not made the schema yet
            time.sleep(poll)
    return False
