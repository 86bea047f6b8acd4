"""Progress output: a bar on a terminal, plain lines otherwise, lines per recipient when small."""

from __future__ import annotations

import io

from asyncmailer.progress import ConsoleObserver
from asyncmailer.results import RecipientResult, Status

RESULTS = [
    RecipientResult("a@example.org", Status.ACCEPTED, 250, "2.0.0 OK"),
    RecipientResult("b@example.org", Status.DEFERRED, 451, "4.3.0 later"),
]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_bar_on_a_terminal() -> None:
    stream = Terminal()
    observer = ConsoleObserver(per_recipient=False, stream=stream)
    await observer.started(3)
    await observer.results(RESULTS)
    observer.finish()
    text = stream.getvalue()
    assert "1/3" in text  # a deferral is not an answer yet
    assert "1 accepted, 1 deferrals" in text


async def test_plain_lines_elsewhere_with_a_final_one() -> None:
    stream = io.StringIO()
    observer = ConsoleObserver(per_recipient=False, stream=stream, interval=0)
    await observer.started(3)
    await observer.results(RESULTS)
    observer.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("asyncmailer: 1/3 recipients (1 accepted, 1 deferrals), ")
    assert ", ETA " in lines[0]
    assert lines[-1].startswith("asyncmailer: 1/3 recipients") and "ETA" not in lines[-1]


async def test_lines_per_recipient_and_nothing_left() -> None:
    stream = io.StringIO()
    observer = ConsoleObserver(per_recipient=True, stream=stream)
    await observer.started(2)
    await observer.results(RESULTS)
    assert stream.getvalue().splitlines() == [
        "  accepted a@example.org 250 2.0.0 OK",
        "  deferred b@example.org 451 4.3.0 later",
    ]
    empty = io.StringIO()
    await ConsoleObserver(per_recipient=False, stream=empty).started(0)
    assert "nothing left to send" in empty.getvalue()


async def test_a_long_list_gets_its_total_once_read() -> None:
    stream = io.StringIO()
    observer = ConsoleObserver(per_recipient=False, stream=stream, interval=0)
    await observer.started(None)  # still reading the list: no total, no ETA
    await observer.results(RESULTS[:1])
    await observer.counted(4)
    await observer.results(RESULTS[1:])
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("asyncmailer: 1 recipients (1 accepted), ") and "ETA" not in lines[0]
    assert lines[1].startswith("asyncmailer: 1/4 recipients (1 accepted, 1 deferrals), ")
    assert ", ETA " in lines[1]
    nothing = io.StringIO()
    await ConsoleObserver(per_recipient=False, stream=nothing).counted(0)
    assert "nothing left to send" in nothing.getvalue()


async def test_the_progress_line_shows_each_relays_current_rate() -> None:
    stream = io.StringIO()
    observer = ConsoleObserver(per_recipient=False, stream=stream, interval=0)
    await observer.started(3)
    await observer.relay("gmail", 48.4, 3)
    await observer.relay("isp", None, 4)
    await observer.results(RESULTS)
    await observer.relay("gmail", 38.7, 2)  # cut by a throttling reply
    await observer.results(RESULTS[:1])
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("; via gmail 48/s x3, isp unpaced x4")
    assert lines[1].endswith("; via gmail 39/s x2, isp unpaced x4")


async def test_one_unpaced_relay_adds_nothing_to_the_line() -> None:
    stream = io.StringIO()
    observer = ConsoleObserver(per_recipient=False, stream=stream, interval=0)
    await observer.started(3)
    await observer.relay("127.0.0.1:25", None, 4)
    await observer.results(RESULTS)
    assert "via" not in stream.getvalue()
