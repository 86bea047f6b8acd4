"""Command bytes: what goes on the wire, and no CR, LF or NUL inside an argument."""

from __future__ import annotations

import pytest

from asyncmailer.smtp.commands import UnsafeArgumentError, envelope, mail_from, rcpt_to


def test_a_pipelined_envelope_is_one_group() -> None:
    assert envelope("s@example.com", ["a@example.com", "b@example.com"], 123) == (
        b"MAIL FROM:<s@example.com> SIZE=123\r\n"
        b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    )
    assert mail_from("s@example.com", None) == "MAIL FROM:<s@example.com>\r\n"


@pytest.mark.parametrize("bad", ["a@example.com>\r\nRCPT TO:<b@example.com", "a\n@x.com", "a\0@x"])
def test_an_argument_with_a_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(UnsafeArgumentError, match="CR, LF or NUL"):
        rcpt_to(bad)
    with pytest.raises(UnsafeArgumentError):
        mail_from(bad, 10)
    with pytest.raises(UnsafeArgumentError):
        envelope("s@example.com", ["ok@example.com", bad], 10)
