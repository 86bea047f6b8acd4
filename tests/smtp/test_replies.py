"""Reply framing: several replies per read, multi-line replies, partial reads, garbage."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib import SMTPReadTimeoutError, SMTPResponse, SMTPServerDisconnected

from asyncmailer.smtp.replies import MAX_REPLY, ReplyError, ReplyReader, parse_replies


def test_several_replies_in_one_read() -> None:
    buffer = bytearray(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 no\r\n354 go on\r\n")
    assert parse_replies(buffer) == [
        SMTPResponse(250, "2.1.0 OK"),
        SMTPResponse(250, "2.1.5 OK"),
        SMTPResponse(550, "5.1.1 no"),
        SMTPResponse(354, "go on"),
    ]
    assert buffer == b""


def test_multiline_and_partial_replies_wait_for_the_rest() -> None:
    buffer = bytearray(b"250-first\r\n250-second\r\n25")
    assert parse_replies(buffer) == []
    assert buffer == b"250-first\r\n250-second\r\n25"  # nothing consumed yet
    buffer.extend(b"0 last\r\n421 bye\n")  # a bare LF ends a line too
    assert parse_replies(buffer) == [
        SMTPResponse(250, "first\nsecond\nlast"),
        SMTPResponse(421, "bye"),
    ]
    assert buffer == b""


def test_known_replies_are_looked_up_and_never_mixed_with_multiline_ones() -> None:
    known: dict[bytes, SMTPResponse] = {}
    stream = b"250 2.1.5 Ok\r\n250 2.0.0 queued as A1\r\n"
    first = parse_replies(bytearray(stream), known)
    again = parse_replies(bytearray(stream), known)
    assert first == again == parse_replies(bytearray(stream))
    assert again[0] is first[0]  # looked up, not parsed again
    # A known line that ends a multi-line reply belongs to that reply.
    assert parse_replies(bytearray(b"250-SIZE 10\r\n250 2.1.5 Ok\r\n"), known) == [
        SMTPResponse(250, "SIZE 10\n2.1.5 Ok")
    ]
    # Lines that never repeat (queue ids) do not grow it without bound.
    for number in range(1000):
        parse_replies(bytearray(b"250 queued as %d\r\n" % number), known)
    assert 0 < len(known) <= 64


@pytest.mark.parametrize("garbage", [b"hello\r\n", b"2x0 OK\r\n", b"\r\n"])
def test_garbage_is_an_error(garbage: bytes) -> None:
    with pytest.raises(ReplyError, match="malformed reply line"):
        parse_replies(bytearray(garbage))


def test_endless_reply_is_an_error() -> None:
    with pytest.raises(ReplyError, match="too long"):
        parse_replies(bytearray(b"250-" + b"x" * MAX_REPLY))


async def test_reader_times_out_and_reports_a_lost_connection() -> None:
    reader = ReplyReader()
    with pytest.raises(SMTPReadTimeoutError):
        await reader.read(0.01)
    waiting = asyncio.ensure_future(reader.read(5))
    await asyncio.sleep(0)
    reader.data_received(b"250 OK\r\n")
    assert await waiting == SMTPResponse(250, "OK")
    waiting = asyncio.ensure_future(reader.read(5))
    await asyncio.sleep(0)
    reader.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(SMTPServerDisconnected, match="reset by peer"):
        await waiting


async def test_take_returns_a_reply_at_hand_in_order_without_waiting() -> None:
    reader = ReplyReader()
    assert reader.take() is None
    reader.data_received(b"250 first\r\n354 second\r\n")
    assert reader.take() == SMTPResponse(250, "first")
    assert await reader.read(1) == SMTPResponse(354, "second")  # the same queue, in order
    assert reader.take() is None
