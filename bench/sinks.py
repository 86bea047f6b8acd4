"""The SMTP sinks, one fresh process per measured run, on 127.0.0.1 only.

`smtp-sink` (Postfix) for the 0 ms rows and `latency_sink.py` for the rows with a per-reply
delay. Each reports at the end how many messages it accepted, which is checked against the
number the sender claims it sent. The same `Sink` class runs the stunnel legs of the TLS rows
(see tls.py), which count nothing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from measure import cpu_seconds, reap

HOST = "127.0.0.1"
LATENCY_SINK = Path(__file__).with_name("latency_sink.py")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_POLL = 0.02
_SMTP_SINK_COUNT = re.compile(rb"mesg=(\d+)")
_LATENCY_SINK_COUNT = re.compile(rb"messages=(\d+)")
_LATENCY_SINK_BYTES = re.compile(rb"data_bytes=(\d+)")
_THROTTLED = re.compile(rb"throttled=(\d+)")
_SETTLED = re.compile(rb"settled=([\d.]+)")
_LISTENING = re.compile(rb"listening [\d.]+:(\d+)")
# smtp-sink -c rewrites its counters after each event: the first message makes it "mesg=1".
_SMTP_SINK_FIRST = re.compile(rb"mesg=[1-9]")
_FIRST_POLL = 0.005  # seconds between looks for the first message
_FIRST_BYTES = 64 * 1024  # "mesg=1" comes within the first few lines of counters


@dataclass(frozen=True, slots=True)
class SinkTotals:
    """What a sink says it accepted (None: it did not say)."""

    messages: int | None
    data_bytes: int | None
    cpu_seconds: float | None  # the sink's own CPU time over its life
    # Seconds from `watch_first(start)` until the sink had accepted its first message (None:
    # not watched, or this sink cannot tell).
    first_message_s: float | None = None
    throttled: int | None = None  # a throttling sink's 421 replies
    settled: float | None = None  # and the rate it accepted over the second half, msgs/s


def _last_int(pattern: re.Pattern[bytes], text: bytes) -> int | None:
    found = pattern.findall(text)
    return int(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Poll until something accepts connections on `port` (bounded by _START_TIMEOUT)."""
    for _ in range(int(_START_TIMEOUT / _POLL)):
        if proc.poll() is not None:
            raise RuntimeError(f"sink exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(_POLL)
    raise RuntimeError(f"sink not listening on {HOST}:{port} after {_START_TIMEOUT} s")


class Sink:
    """A sink subprocess, used as a context manager; `stop()` returns what it accepted."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        output: Path,
        *,
        port: int,
        counter: re.Pattern[bytes] | None,
        ready: re.Pattern[bytes] | None = None,
        first: re.Pattern[bytes] | None = None,
    ) -> None:
        """`port` 0: the sink picks one and prints ``listening HOST:PORT``. `ready`: it is
        listening once its output matches this (else a connection to `port` tells). `first`:
        its output matches this once it has accepted a message."""
        self.name = name
        self._argv = argv
        self._output = output
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._counter = counter
        self._ready = ready
        self._first = first
        self._first_at: float | None = None
        self._watching = threading.Event()  # cleared to stop the watcher
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> Sink:
        with self._output.open("wb") as out:
            self._proc = subprocess.Popen(
                self._argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            if self._ready is not None:
                self._wait_output(self._ready)
            elif self.port:
                _wait_listening(self.port, self._proc)
            else:
                self.port = int(self._wait_output(_LISTENING).group(1))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_output(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        assert self._proc is not None
        for _ in range(int(_START_TIMEOUT / _POLL)):
            match = pattern.search(self._output.read_bytes())
            if match:
                return match
            if self._proc.poll() is not None:
                break
            time.sleep(_POLL)
        raise RuntimeError(f"{self.name} did not start: {self._output.read_text()[-500:]}")

    def watch_first(self, start: float) -> None:
        """Note when the first message arrives, in `time.perf_counter()` seconds after
        `start` (the sender's start), polling the output in a thread until it does."""
        if self._first is None:
            return
        self._watching.set()
        self._watcher = threading.Thread(target=self._watch, args=(start,), daemon=True)
        self._watcher.start()

    def _watch(self, start: float) -> None:
        assert self._first is not None
        with self._output.open("rb") as out:
            while self._watching.is_set():
                out.seek(0)
                if self._first.search(out.read(_FIRST_BYTES)):
                    self._first_at = time.perf_counter() - start
                    return
                time.sleep(_FIRST_POLL)

    def stop(self) -> SinkTotals:
        """Stop the sink (SIGTERM, then SIGKILL); return what it counted."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self._watching.clear()
            watcher.join()
        proc, self._proc = self._proc, None
        cpu = None
        if proc is not None and proc.returncode is None:  # not reaped yet
            proc.send_signal(signal.SIGTERM)
            cpu = cpu_seconds(reap(proc, _STOP_TIMEOUT).usage)
        output = self._output.read_bytes()
        messages = _last_int(self._counter, output) if self._counter else None
        settled = _SETTLED.findall(output)
        return SinkTotals(
            messages,
            _last_int(_LATENCY_SINK_BYTES, output),
            cpu,
            self._first_at,
            _last_int(_THROTTLED, output),
            float(settled[-1]) if settled else None,
        )


def smtp_sink(binary: Path, output: Path) -> Sink:
    """Postfix smtp-sink: PIPELINING on, no AUTH announced, counters on stdout (-c)."""
    port = free_port()
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # required when run as root
    argv = [str(binary), "-c", "-a", *as_root, "-h", "localhost", f"{HOST}:{port}", "1024"]
    return Sink(
        "smtp-sink", argv, output, port=port, counter=_SMTP_SINK_COUNT, first=_SMTP_SINK_FIRST
    )


def latency_sink(delay_ms: int, output: Path, max_seconds: float, throttle: int = 0) -> Sink:
    """`throttle`: messages a second it takes, answering 421 4.7.0 above (0: all)."""
    argv = [
        sys.executable,
        str(LATENCY_SINK),
        "--delay-ms",
        str(delay_ms),
        "--max-seconds",
        str(max_seconds),
        *(("--throttle-rate", str(throttle)) if throttle else ()),
    ]
    return Sink("latency_sink", argv, output, port=0, counter=_LATENCY_SINK_COUNT)
