"""`run_forked`: real forked processes, their exit codes and the signals passed on to them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from asyncmailer.processes import can_fork, run_forked

pytestmark = pytest.mark.skipif(not can_fork(), reason="this platform cannot fork")


def test_each_child_runs_once_with_its_number_and_its_code_comes_back(tmp_path: Path) -> None:
    def child(number: int) -> int:
        (tmp_path / f"{number}.pid").write_text(str(os.getpid()))
        return number + 10

    assert run_forked(3, child) == [11, 12, 13]
    pids = {int((tmp_path / f"{n}.pid").read_text()) for n in (1, 2, 3)}
    assert len(pids) == 3 and os.getpid() not in pids  # three processes, none of them this one


def test_a_child_that_raises_exits_70_with_its_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def child(number: int) -> int:
        if number == 2:
            raise RuntimeError("a bug in the child")
        return 0

    assert run_forked(2, child) == [0, 70]
    assert "RuntimeError: a bug in the child" in capfd.readouterr().err


def test_sigterm_to_the_parent_reaches_every_child_once_and_their_handlers_come_back() -> None:
    def child(number: int) -> int:
        # The parent's handler was put back to the default in the child: SIGTERM kills it.
        if number == 2:  # the last one: every pid is known when it asks the parent
            os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(30)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert run_forked(2, child) == [-signal.SIGTERM, -signal.SIGTERM]
    assert time.monotonic() - started < 20  # killed, not slept out
    assert signal.getsignal(signal.SIGTERM) is before


def test_each_child_leads_a_process_group_of_its_own() -> None:
    def child(number: int) -> int:
        return 0 if os.getpgid(0) == os.getpid() != os.getpgid(os.getppid()) else 1

    assert run_forked(2, child) == [0, 0]
