"""Several copies of this process: `worker --processes N` forks N workers of one campaign
(each with its own GIL) and waits for them, passing SIGINT and SIGTERM on."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["can_fork", "run_forked"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_CRASHED = 70  # a child whose function raised (EXIT_INTERNAL)


def can_fork() -> bool:
    """This platform can run `run_forked()` (POSIX)."""
    return hasattr(os, "fork")


def run_forked(count: int, child: Callable[[int], int]) -> list[int]:
    """Run `child(1)` ... `child(count)`, each in a process forked from this one, and return
    their exit codes in that order (negative: killed by that signal).

    Forked, not started afresh: what this process has imported the children have, so they
    start at once (docs/design.md: start-up and exit). Call it with no event loop and no
    other thread running. Each child is the leader of a process group of its own, so a
    terminal's Ctrl-C (sent to the foreground group) reaches only this process, which passes
    it on once: a worker counts a second SIGINT as "stop at once".
    """
    parent = os.getpid()
    pids: list[int] = []
    codes: dict[int, int] = {}  # the children reaped, by pid (a pid may be reused after)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != parent:  # a child before it put its own handlers back
            return
        for pid in pids:
            if pid not in codes:  # not reaped: it is there, if only as a zombie
                os.kill(pid, signum)

    sys.stdout.flush()
    sys.stderr.flush()
    # Before the first fork: a signal coming between two forks still reaches every child
    # started so far.
    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        for number in range(1, count + 1):
            # Blocked until the pid is known: a signal coming in between would miss it.
            signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
            try:
                pid = os.fork()
                if pid == 0:
                    _child(number, child, previous)
                pids.append(pid)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        while len(codes) < len(pids):
            pid, status = os.wait()  # a signal's handler runs, then the wait goes on
            if pid in pids:
                codes[pid] = os.waitstatus_to_exitcode(status)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return [codes[pid] for pid in pids]


def _child(
    number: int,
    child: Callable[[int], int],
    handlers: dict[signal.Signals, Any],
) -> None:
    """The forked process: run `child(number)` and exit with its code, never returning into
    the parent's code."""
    code = _CRASHED
    try:
        os.setpgid(0, 0)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        # What the parent passed on since the fork is delivered here, to those handlers.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        code = child(number)
    except BaseException:  # `child` reports what it expects: this is a bug, or --debug
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
