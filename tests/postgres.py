"""A private PostgreSQL server for the tests: Debian's binaries, a temporary data folder, a
free loopback port, its own socket folder; never the system's cluster.

initdb and postgres refuse to run as root, so as root they run as the ``postgres`` user
(runuser), in a folder that user owns. `PgServer.start()` says why it cannot, so that the
tests that need it skip with that reason."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PASSWORD", "CommitCutter", "PgServer", "PgUnavailable"]

PASSWORD = "pg-Secret-7741"  # the superuser's: every test URL carries it, never a message
_USER = "postgres"


class PgUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the reason is the text)."""


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise PgUnavailable(
        "PostgreSQL's server is not installed (Debian: apt-get install postgresql; .ci/run "
        "installs it)"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgServer:
    """One server: `start()`, `url(database)`, `restart()`, `stop()`."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="asyncmailer-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self.options = ""

    def __repr__(self) -> str:
        return f"<PgServer 127.0.0.1:{self.port} {self.data}>"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / command[0]), *command[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", _USER, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        """:raises PgUnavailable: initdb or the server failed (with their output)."""
        if self._as_postgres:
            try:
                user = pwd.getpwnam(_USER)
            except KeyError:
                raise PgUnavailable("no 'postgres' user to run the server as") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD)
        if self._as_postgres:
            os.chown(password_file, pwd.getpwnam(_USER).pw_uid, -1)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                _USER,
                "--pwfile",
                str(password_file),
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        except (subprocess.CalledProcessError, OSError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise PgUnavailable(f"initdb failed: {detail.strip()[-400:]}") from err
        password_file.unlink()
        self.options = options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        try:
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
            )
        except (subprocess.CalledProcessError, OSError) as err:
            log = self.log.read_text(errors="replace")[-400:] if self.log.exists() else ""
            raise PgUnavailable(f"the server did not start: {log.strip()}") from err

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        """Stop the server (fast: every session is cut) and start it again."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart"
        )

    def halt(self) -> None:
        """Stop the server (fast: every session is cut), to start it again with `resume()`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "start"
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# The server's CommandComplete message for a COMMIT: tag "C", its length, "COMMIT\0".
_COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"


class CommitCutter:
    """A TCP proxy on loopback in front of a server (no TLS: the test server has none).
    Once `arm()`ed, it cuts the next connection whose server sends a COMMIT's answer,
    without passing that answer on: the transaction is committed, and the client cannot
    know it. `cuts` counts the connections so cut."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CommitCutter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, url: str) -> str:
        """`url` (of the server behind) through the proxy."""
        return url.replace(f":{self.target}/", f":{self.port}/", 1)

    def arm(self) -> None:
        self.armed = True

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_out)
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_out.close()
            return
        self._writers.add(server_out)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, answers: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if answers and self.armed and _COMMITTED in data:
                        self.armed = False
                        self.cuts += 1
                        break
                    sink.write(data)
            for writer in (client_out, server_out):
                writer.close()

        await asyncio.gather(pipe(client_in, server_out, False), pipe(server_in, client_out, True))
        for writer in (client_out, server_out):
            with contextlib.suppress(OSError):
                await writer.wait_closed()
