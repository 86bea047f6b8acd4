"""Run one sender as a subprocess and measure it: wall-clock, its own CPU time and peak RSS."""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One finished (or killed) subprocess."""

    returncode: int
    seconds: float
    cpu_seconds: float
    max_rss_kb: int | None  # None: GNU time wrapped the run but reported nothing (killed)
    timed_out: bool


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _wait_exited(pid: int, timeout: float) -> bool:
    """Block until the process exits (True) or `timeout` seconds pass (False)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return bool(ready)


@dataclass(frozen=True, slots=True)
class Reaped:
    """How a child ended and what it used (its own usage, not its parent's)."""

    returncode: int
    usage: resource.struct_rusage
    timed_out: bool


def reap(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> Reaped:
    """Wait up to `timeout` s for `proc`, SIGKILL it (or its process group) if still running,
    and reap it with os.wait4 to get its resource usage.

    `proc` must not have been reaped yet (no poll() or wait() that saw it exit).
    """
    exited = _wait_exited(proc.pid, timeout)
    if not exited:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = _exit_code(status)  # reaped here: keep Popen from waiting again
    return Reaped(proc.returncode, usage, not exited)


def _peak_rss_kb(path: Path) -> int | None:
    """The last number GNU time wrote with -f %M (it may first add a line about the exit)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    numbers = [word for word in lines if word.isdigit()]
    return int(numbers[-1]) if numbers else None


def run_measured(
    argv: Sequence[str],
    *,
    stdout: Path,
    stderr: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    gnu_time: Path | None = None,
) -> ProcessStats:
    """Run `argv` to completion (killed after `timeout` s); output goes to the two files.

    CPU time comes from os.wait4 on this child alone, so it is the sender's own (plus GNU
    time's, a millisecond, when it wraps the sender). Peak RSS comes from GNU time's %M when
    `gnu_time` is given: wait4's ru_maxrss of a child forked from this process never reads
    below this process's own RSS at fork time, because Linux keeps the high-water mark across
    exec.
    """
    rss_file = stdout.with_suffix(".rss")
    if gnu_time is not None:
        argv = [str(gnu_time), "-f", "%M", "-o", str(rss_file), "--", *argv]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        done = reap(proc, timeout, group=True)
        seconds = time.perf_counter() - start
    peak = _peak_rss_kb(rss_file) if gnu_time is not None else done.usage.ru_maxrss
    return ProcessStats(
        returncode=done.returncode,
        seconds=seconds,
        cpu_seconds=cpu_seconds(done.usage),
        max_rss_kb=peak,
        timed_out=done.timed_out,
    )
