"""Reading the campaign's text files: one way to read them, one way to decode them."""

from __future__ import annotations

import stat
from pathlib import Path

import aiofiles
import aiofiles.os

from .errors import InputError

__all__ = ["decode_text", "read_secret", "read_secret_bytes", "read_text"]


def decode_text(raw: bytes, path: Path | str) -> str:
    """Decode UTF-8 (BOM allowed); refuse other encodings and NUL bytes, naming the line.

    :raises InputError: with file and line.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InputError(
            "not valid UTF-8 text (save the file as UTF-8)", path=path, line=line
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InputError("contains a NUL byte; is it a text file?", path=path, line=line)
    return text


async def _read_file(path: Path, what: str, field: str | None) -> bytes:
    """A regular file's bytes, read without blocking the event loop.

    :raises InputError: missing, a folder, not a regular file, or unreadable.
    """
    try:
        # A FIFO or a device would block the read (or never end): regular files only.
        mode = (await aiofiles.os.stat(path)).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if not stat.S_ISREG(mode):
            raise InputError(
                f"{what} is not a regular file (a FIFO, device or socket)", path=path, field=field
            )
        async with aiofiles.open(path, "rb") as handle:
            return await handle.read()
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=path, field=field) from None
    except IsADirectoryError:
        raise InputError(f"{what} is a folder, not a file", path=path, field=field) from None
    except OSError as err:
        raise InputError(f"cannot read {what}: {err.strerror}", path=path, field=field) from err


async def read_text(path: Path, what: str, *, field: str | None = None) -> str:
    """Read a UTF-8 text file without blocking the event loop.

    :raises InputError: missing, a folder, unreadable, not UTF-8 or with a NUL byte.
    """
    return decode_text(await _read_file(path, what, field), path)


async def _readable_by_others(path: Path, what: str) -> list[str]:
    """A warning when users other than the owner may read the file (none otherwise).

    :raises InputError: it cannot be looked at.
    """
    try:
        mode = (await aiofiles.os.stat(path)).st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read {what}: {err.strerror}", path=path) from err
    if mode & 0o077:
        return [
            f"warning: {path} is readable by other users (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {path}"
        ]
    return []


async def read_secret(path: Path, what: str) -> tuple[str, list[str]]:
    """Read a one-line secret (a password) and warn when other users can read the file.
    Returns the secret without its line ending, and the warnings.

    :raises InputError: as `read_text`.
    """
    notices = await _readable_by_others(path, what)
    text = await read_text(path, what)
    return text.removesuffix("\n").removesuffix("\r"), notices


async def read_secret_bytes(path: Path, what: str) -> tuple[bytes, list[str]]:
    """Read a secret file as it is (a private key), and warn when other users can read it.

    :raises InputError: missing, a folder, not a regular file, or unreadable.
    """
    notices = await _readable_by_others(path, what)
    return await _read_file(path, what, None), notices
