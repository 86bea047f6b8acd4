"""The journal runs on the SQLite that ships with the Pythons users have (Ubuntu 22.04: 3.37.2):
no statement uses syntax of a newer SQLite, and an older one is refused with a clear line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import asyncmailer.journal
from asyncmailer.errors import JournalError
from asyncmailer.journal import schema

# Syntax SQLite added after 3.35 (RETURNING): the JSON operators (3.38), unixepoch() (3.38),
# STRICT tables (3.37 is fine, but nothing needs them), RIGHT and FULL joins (3.39).
NEWER = re.compile(
    r"->|\bunixepoch\s*\(|\bSTRICT\b|\bRIGHT\s+JOIN\b|\bFULL\s+(OUTER\s+)?JOIN\b", re.I
)


SQL = re.compile(r"\b(SELECT|UPDATE|INSERT|CREATE|DELETE|WHERE|FROM|SET|PRAGMA)\b")


def sql_texts() -> list[tuple[str, str]]:
    """Every SQL string literal of the journal package (f-string parts too), and the statements
    the schema module generates, with where each was found."""
    found = []
    folder = Path(asyncmailer.journal.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SQL.search(node.value)
            ):
                found.append((f"{path.name}:{node.lineno}", node.value))
    for name in ("SCHEMA", "RECORD", "INSERT", "LOOKUP", "MARK_DATA"):
        found.append((f"schema.{name}", getattr(schema, name)))
    return found


def test_no_statement_needs_a_newer_sqlite_than_the_minimum() -> None:
    texts = sql_texts()
    assert any("json_each" in text for _, text in texts)  # the scan does see the statements
    offending = [(where, text) for where, text in texts if NEWER.search(text)]
    assert offending == []


def test_the_minimum_is_below_ubuntu_2204s_sqlite() -> None:
    assert schema.MIN_SQLITE <= (3, 37, 2)


def test_an_older_sqlite_is_refused_with_the_versions_named() -> None:
    with pytest.raises(JournalError, match=r"SQLite is 3\.34\.1; the journal needs 3\.35\.0"):
        schema.check_sqlite((3, 34, 1))
    schema.check_sqlite((3, 37, 2))  # Ubuntu 22.04's is enough


def test_the_load_statements_need_no_newer_sqlite_either() -> None:
    for text in (schema.INSERT_PLAIN, schema.GROUP_OF):
        assert not NEWER.search(text), text
