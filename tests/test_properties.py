"""Hostile input, generated: config documents, list rows, addresses, header values and file
names never end in anything but a clear `MailerError` (exit 2), never in a traceback (exit 70).

`make test` runs a few thousand examples; `make fuzz` runs many more (HYPOTHESIS_PROFILE).
"""

from __future__ import annotations

import asyncio
import email
import json
import math
import os
from email import policy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncmailer.addresses import Mailbox, check_header_value, parse_mailbox
from asyncmailer.attachments import Attachment, check_filename
from asyncmailer.config import KNOWN_KEYS, load_campaign
from asyncmailer.errors import InputError, MailerError
from asyncmailer.message import MessageTemplate
from asyncmailer.recipient_list import BadRow, Recipient, RecipientFile

# make test runs the same examples every time (derandomized: CI never fails on luck);
# make fuzz explores new ones.
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Text as hostile files carry it: control characters, line breaks, bidi overrides, zero
# width, encoded words, surrogates excluded (they cannot be written as UTF-8).
_pieces = st.one_of(
    st.characters(blacklist_categories=["Cs"]),
    st.sampled_from(["\r", "\n", "\x00", "\x1b", "\u202e", "\u200b", "\u2028", "=?", "?=", "@"]),
    st.sampled_from(["user@example.com", "Ann <ann@example.org>", "=?utf-8?b?ZXZpbC5leGU=?="]),
)
hostile_text = st.lists(_pieces, max_size=20).map("".join)
values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from([*KNOWN_KEYS, "colour", ""]) | hostile_text, values)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@given(document=documents)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_config_document_loads_or_is_one_clear_line(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "campaign.json"
    path.write_text(json.dumps(document, allow_nan=True), encoding="utf-8")
    try:
        campaign = run(load_campaign(path, env={}))
    except MailerError as err:
        text = str(err)
        assert "\n" not in text and "\r" not in text and "\x1b" not in text
        assert len(text) < 2000
        return
    for number in (campaign.rate, campaign.server.timeout, campaign.retry_delay):
        assert number is None or math.isfinite(number)


@given(rows=st.lists(hostile_text, max_size=20))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_list_row_is_a_recipient_or_one_bad_row(tmp_path: Path, rows: list[str]) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,name\n" + "\n".join(rows) + "\n", encoding="utf-8", newline="")

    async def read() -> list[Recipient | BadRow]:
        source = RecipientFile(path, column="email", name_column="name")
        await source.scan()
        return [item async for item in source]

    try:
        items = run(read())
    except InputError as err:  # the whole file (a NUL byte): one line naming it
        assert str(path) in str(err) and "\n" not in str(err)
        return
    for item in items:
        if isinstance(item, Recipient):
            assert check_header_value(item.mailbox.addr) is None
            assert check_header_value(item.mailbox.name) is None
        else:
            assert "\n" not in str(item) and "\r" not in str(item)


@given(text=hostile_text)
def test_an_address_parses_to_a_safe_mailbox_or_is_a_value_error(text: str) -> None:
    try:
        mailbox = parse_mailbox(text)
    except ValueError:
        return
    assert isinstance(mailbox, Mailbox)
    for part in (mailbox.addr, mailbox.name):
        assert not any(c in part for c in "\r\n\x00")
    again = parse_mailbox(str(mailbox))  # what it writes reads back as the same address
    assert again.addr == mailbox.addr
    if mailbox.name.isascii() and "=?" not in mailbox.name:
        assert again.name == mailbox.name


@given(subject=hostile_text)
def test_a_subject_that_passes_the_check_arrives_as_written(subject: str) -> None:
    if check_header_value(subject) is not None:
        return
    template = MessageTemplate(
        sender=Mailbox("me@example.com"), subject=subject, body="hi\n", attachments=[]
    )
    parts = template.render_parts(to=[])
    data = b"".join(p for p in parts if isinstance(p, bytes)).replace(b"\r\n..", b"\r\n.")
    parsed = email.message_from_bytes(data, policy=policy.default)
    # As a reader sees it: a word longer than a line is folded onto a line of its own.
    assert str(parsed["Subject"] or "").strip() == subject.strip()


@given(name=hostile_text.filter(bool))
def test_a_file_name_arrives_literally_or_is_refused(name: str) -> None:
    try:
        check_filename(name, Path("files") / "x")
    except InputError as err:
        assert "\n" not in str(err)
        with pytest.raises(InputError):
            MessageTemplate(
                sender=Mailbox("me@example.com"),
                subject="s",
                body="b",
                attachments=[Attachment(name, "application/octet-stream", b"x")],
            )
        return
    template = MessageTemplate(
        sender=Mailbox("me@example.com"),
        subject="s",
        body="b",
        attachments=[Attachment(name, "application/octet-stream", b"data")],
    )
    parts = template.render_parts(to=[])
    data = b"".join(p for p in parts if isinstance(p, bytes)).replace(b"\r\n..", b"\r\n.")
    parsed = email.message_from_bytes(data, policy=policy.default)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == name
    assert attachment.get_content() == b"data"
