"""The shared PostgreSQL ledger: workers on any number of hosts run one campaign's run.

`schema` (versioned migrations), `database` (connecting, migrating, the reconnecting
writer), `ledger` (`PgLedger`, the `Ledger` operations with leases and fencing), `runs` (the
campaign's runs, kept in the database). Needs the ``postgresql`` extra (psycopg 3).
"""

from ..errors import MissingExtraError

try:
    import psycopg  # noqa: F401
except ImportError as err:
    raise MissingExtraError("postgresql", err.name or "psycopg") from err

from .ledger import LEASE, LeaseLostError, PgLedger

__all__ = ["LEASE", "LeaseLostError", "PgLedger"]
