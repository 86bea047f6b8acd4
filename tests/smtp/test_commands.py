"""Command bytes: what goes on the wire, and no CR, LF or NUL inside an argument."""

from __future__ import annotations

import pytest

from asyncmailer.smtp.commands import UnsafeArgumentError, envelope, mail_from, rcpt_to, xtext


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


def test_dsn_parameters_go_with_an_envelope_id() -> None:
    assert envelope("s@example.com", ["a@example.com"], None, "20261202T000000Z.1.2.3") == (
        b"MAIL FROM:<s@example.com> RET=HDRS ENVID=20261202T000000Z.1.2.3\r\n"
        b"RCPT TO:<a@example.com> NOTIFY=FAILURE,DELAY\r\nDATA\r\n"
    )
    assert (
        mail_from("s@example.com", 5, "x")
        == "MAIL FROM:<s@example.com> SIZE=5 RET=HDRS ENVID=x\r\n"
    )
    assert rcpt_to("a@example.com") == "RCPT TO:<a@example.com>\r\n"


def test_xtext_encodes_plus_equals_space_and_beyond_ascii() -> None:
    assert xtext("run.a-b_c@d") == "run.a-b_c@d"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("é") == "+C3+A9"


def test_xtext_keeps_exactly_the_printable_ascii_but_plus_and_equals() -> None:
    # Every character up to U+00FF, alone and inside plain text, against RFC 3461's rule
    # byte by byte (the fast path that returns plain text as it is must agree with it).
    for code in range(0x100):
        char = chr(code)
        rule = "".join(
            chr(b) if 33 <= b <= 126 and b not in b"+=" else f"+{b:02X}" for b in char.encode()
        )
        assert xtext(char) == rule, code
        assert xtext(f"a{char}b") == f"a{rule}b", code


@pytest.mark.parametrize("bad", ["id\r\nRSET", "id\n", "id\0"])
def test_an_envelope_id_with_a_line_break_or_nul_is_refused(bad: str) -> None:
    # xtext would encode them; refused all the same: nothing such comes from a journal.
    with pytest.raises(UnsafeArgumentError):
        mail_from("s@example.com", None, bad)
