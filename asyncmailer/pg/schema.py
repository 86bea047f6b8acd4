"""The PostgreSQL ledger's schema: versioned migrations, applied once by whichever worker
comes first (under an advisory lock), and the statements every worker runs."""

from __future__ import annotations

import zlib
from typing import Any

from ..ledger import JournalState

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "TO_SEND", "lock_key"]

TO_SEND = f"('{JournalState.PENDING}', '{JournalState.DEFERRED}')"

# Each entry takes the schema from the version before it (its index) to the next. Never edit
# one that has shipped: add the next.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE asyncmailer_runs (
        serial BIGSERIAL PRIMARY KEY,     -- the rows of one run are keyed by it
        campaign TEXT NOT NULL,           -- the campaign's id (never a file path)
        id TEXT NOT NULL,                 -- the run's id, its start in UTC
        started TIMESTAMPTZ NOT NULL DEFAULT now(),
        ended TIMESTAMPTZ,
        fingerprint JSONB NOT NULL,
        counts JSONB,
        UNIQUE (campaign, id)
    );
    CREATE TABLE asyncmailer_meta (      -- a run's load fence and counters, as the journal's
        run BIGINT NOT NULL REFERENCES asyncmailer_runs ON DELETE CASCADE,
        key TEXT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (run, key)
    );
    CREATE TABLE asyncmailer_quota (     -- the daily quota is the campaign's, across runs
        campaign TEXT NOT NULL,
        day TEXT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (campaign, day)
    );
    CREATE TABLE asyncmailer_leases (    -- a worker's hold on what it claimed
        id BIGSERIAL PRIMARY KEY,
        run BIGINT NOT NULL REFERENCES asyncmailer_runs ON DELETE CASCADE,
        owner TEXT NOT NULL,              -- host, process: for the operator
        expires TIMESTAMPTZ NOT NULL      -- on the database's clock
    );
    CREATE TABLE asyncmailer_groups (
        run BIGINT NOT NULL REFERENCES asyncmailer_runs ON DELETE CASCADE,
        id BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        headers BOOLEAN NOT NULL,
        PRIMARY KEY (run, id)
    );
    CREATE TABLE asyncmailer_recipients (
        id BIGSERIAL PRIMARY KEY,         -- in the list's order
        run BIGINT NOT NULL,
        key TEXT NOT NULL,                -- the address, lower-cased: each address once
        addr TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        grp BIGINT NOT NULL,
        state TEXT NOT NULL DEFAULT '{JournalState.PENDING}',
        code INTEGER,
        message TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        run_attempts INTEGER NOT NULL DEFAULT 0,
        first_try DOUBLE PRECISION,
        next_try DOUBLE PRECISION NOT NULL DEFAULT 0,
        loaded INTEGER NOT NULL DEFAULT 0,
        fields JSONB,
        claim BIGINT,                     -- the lease that holds it (in flight, past DATA)
        batch BIGINT,                     -- which claim of that lease took it
        UNIQUE (run, key),
        FOREIGN KEY (run, grp) REFERENCES asyncmailer_groups (run, id) ON DELETE CASCADE
    );
    CREATE INDEX asyncmailer_recipients_due ON asyncmailer_recipients (run, grp, next_try)
        WHERE state IN {TO_SEND};
    CREATE INDEX asyncmailer_recipients_claim ON asyncmailer_recipients (claim)
        WHERE claim IS NOT NULL;
    """,
    # 2: the campaign's rate, shared by its workers: the next free slot (epoch seconds on
    # the database's clock).
    """
    CREATE TABLE asyncmailer_pace (
        campaign TEXT PRIMARY KEY,
        next DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: the campaign's max_connections, shared by its workers: who holds which of them.
    """
    CREATE TABLE asyncmailer_connections (
        campaign TEXT NOT NULL,
        slot INTEGER NOT NULL,
        lease BIGINT NOT NULL REFERENCES asyncmailer_leases ON DELETE CASCADE,
        PRIMARY KEY (campaign, slot)
    );
    """,
    # 4: which relay answered for each recipient (several relays: `servers:`).
    """
    ALTER TABLE asyncmailer_recipients ADD COLUMN relay TEXT NOT NULL DEFAULT '';
    """,
    # 5: scheduled runs (`asyncmailer schedule`): the occurrence a run was begun for, and the
    # later ones it went on at (they are not run again).
    """
    ALTER TABLE asyncmailer_runs ADD COLUMN scheduled TIMESTAMPTZ,
        ADD COLUMN covers JSONB NOT NULL DEFAULT '[]';
    """,
    # 6: the suppression store of the campaigns on this database (as a state folder's
    # suppressions.sqlite: entries, and when an entry was removed by hand).
    """
    CREATE TABLE asyncmailer_suppressions (
        key TEXT PRIMARY KEY,             -- user@example.org (as Mailbox.key) or @example.org
        reason TEXT NOT NULL,             -- a suppression.Reason
        code TEXT,                        -- a bounce's reply and enhanced code: 550 5.1.1
        note TEXT NOT NULL DEFAULT '',
        campaign TEXT,                    -- the campaign that added it, if one did
        added DOUBLE PRECISION NOT NULL   -- when (seconds since the epoch)
    );
    CREATE TABLE asyncmailer_suppressions_removed (
        key TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    """,
    # 7: the rate and max_connections of each relay (`servers:`), shared by the workers as
    # the campaign's are: keyed '' (the campaign's) or '@name' (a relay's).
    """
    ALTER TABLE asyncmailer_pace ADD COLUMN key TEXT NOT NULL DEFAULT '',
        DROP CONSTRAINT asyncmailer_pace_pkey, ADD PRIMARY KEY (campaign, key);
    ALTER TABLE asyncmailer_connections ADD COLUMN key TEXT NOT NULL DEFAULT '',
        DROP CONSTRAINT asyncmailer_connections_pkey, ADD PRIMARY KEY (campaign, key, slot);
    """,
    # 8: no foreign key from a recipient to its group: its check, one query per inserted row,
    # was over a third of the server's work in loading a list (docs/design.md). Both rows
    # are written only by the ledger, in one transaction. A run deleted still takes its
    # recipients along, by a trigger once per run (its groups go by their foreign key).
    """
    ALTER TABLE asyncmailer_recipients DROP CONSTRAINT asyncmailer_recipients_run_grp_fkey;
    CREATE FUNCTION asyncmailer_run_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM asyncmailer_recipients WHERE run = OLD.serial;
        RETURN OLD;
    END $$;
    CREATE TRIGGER asyncmailer_run_deleted BEFORE DELETE ON asyncmailer_runs
        FOR EACH ROW EXECUTE PROCEDURE asyncmailer_run_deleted();
    """,
    # 9: the last quota write of each worker (its number, and what it granted): the writer
    # runs a write again when its commit's answer is lost, and a quota write must not count
    # twice (a give-back counted twice would let the campaign past its daily_quota). Not
    # tied to the lease row: a repeat may come after the lease was reaped. Deleted as the
    # worker ends; a worker that died leaves its row.
    """
    CREATE TABLE asyncmailer_quota_writes (
        lease BIGINT PRIMARY KEY,
        write BIGINT NOT NULL,
        granted BIGINT NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Advisory lock keys: one namespace (the first int), then what is locked.
_NAMESPACE = 0x616D6C  # "aml"
MIGRATE, RUNS, LOAD, CONNECTIONS = 1, 2, 3, 4


def lock_key(kind: int, subject: Any = 0) -> tuple[int, int]:
    """The two 32-bit keys of `pg_advisory_xact_lock(int, int)` for `kind` of `subject` (a
    run serial, or a campaign id hashed)."""
    if isinstance(subject, str):
        subject = zlib.crc32(subject.encode())
    return _NAMESPACE + kind, (subject & 0x7FFFFFFF)
