"""The XOAUTH2 access token (`auth: xoauth2`): read from `token_file` or printed by
`token_command`, shared by every connection to the server, and fetched again when the server
says the one it was given has expired.

A token is a secret like a password: it is never part of an error, a repr or a log line
(`Scrubber` takes it out of server replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from ..config import AuthMethod, ServerSettings
from ..errors import AuthError, InputError
from ..textfiles import read_secret

__all__ = ["TokenSource"]

# RFC 6750 b64token: what a bearer token may hold (no space, no control character).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenSource:
    """One server's access token, fetched once and again on `refresh()`.

    :raises AuthError: (from `token()` and `refresh()`) no token could be had: the file is
        unreadable or empty, the command failed, timed out or printed no token.
    """

    def __init__(self, settings: ServerSettings) -> None:
        if settings.token_file is None and not settings.token_command:
            raise ValueError("auth: xoauth2 needs token_file or token_command")
        self._file = settings.token_file
        self._command = settings.token_command
        self._timeout = settings.connect_timeout
        self._host, self._port = settings.host, settings.port
        self._token: str | None = None
        self._lock = asyncio.Lock()
        self.fetched = 0  # how many times the file was read or the command run

    @classmethod
    def of(cls, settings: ServerSettings) -> TokenSource | None:
        """The server's token source: None unless it logs in with XOAUTH2 (a run's pool and
        `check`'s probe take it from here alike)."""
        return cls(settings) if settings.auth is AuthMethod.XOAUTH2 else None

    def __repr__(self) -> str:
        source = f"file={self._file}" if self._file else f"command={(self._command or ('',))[0]}"
        return f"<TokenSource {source} fetched={self.fetched}>"

    async def token(self) -> str:
        """The current token (fetched on first use)."""
        async with self._lock:
            if self._token is None:
                self._token = await self._fetch()
            return self._token

    async def refresh(self, stale: str) -> str:
        """A token other than `stale`, which the server refused: fetched anew, unless another
        connection already did."""
        async with self._lock:
            if self._token is None or self._token == stale:
                self._token = await self._fetch()
            return self._token

    def _fail(self, reason: str) -> AuthError:
        return AuthError(f"no XOAUTH2 access token: {reason}", host=self._host, port=self._port)

    async def _fetch(self) -> str:
        self.fetched += 1
        if self._file is not None:
            try:
                text, _ = await read_secret(self._file, "token file")
            except InputError as err:
                raise self._fail(str(err)) from None
            where = f"token_file {self._file}"
        else:
            text = await self._run()
            where = "the output of token_command"
        token = text.strip().split("\n", 1)[0].strip()
        if not token:
            raise self._fail(f"{where} is empty")
        if not _TOKEN.fullmatch(token):
            raise self._fail(f"{where} is not a bearer token (one line, no spaces)")
        return token

    async def _run(self) -> str:
        assert self._command is not None
        name = self._command[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # may say anything, secrets too: not shown
            )
        except OSError as err:
            raise self._fail(f"cannot run token_command {name}: {err.strerror}") from None
        try:
            out, _ = await asyncio.wait_for(process.communicate(), self._timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise self._fail(
                f"token_command {name} did not finish in {self._timeout:g} s"
            ) from None
        if process.returncode != 0:
            raise self._fail(
                f"token_command {name} exited with {process.returncode} "
                "(run it yourself to see why)"
            )
        return out.decode("utf-8", "replace")
