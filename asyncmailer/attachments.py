"""The campaign's attachments: which files of the folder may be attached, their names, and
their content, base64-encoded once; a large one is encoded into a temporary file and streamed
from there to every connection, so memory does not grow with its size."""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

__all__ = [
    "SPOOL_ABOVE",
    "Attachment",
    "Part",
    "Spooled",
    "check_filename",
    "encoded_size",
    "load_attachments",
    "spool",
]

# Files larger than this are encoded into a temporary file rather than memory.
SPOOL_ABOVE = 8 * 1024 * 1024
_LINE = 57  # bytes per base64 line of 76 characters, as the email package writes them
_BLOCK = _LINE * 16384  # read and encoded at a time (about 0.9 MB)
# Characters a file name must not carry: they hide or reorder what a reader sees.
_SPOOFING = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file to attach: its `data` in memory, or its `source` file, read when encoded."""

    filename: str
    content_type: str
    data: bytes = field(default=b"", repr=False)
    source: Path | None = None


class Spooled:
    """A large attachment's encoded body in a temporary file (deleted when closed): base64
    lines with CRLF, which never start with "." (nothing to dot-stuff). Read by position, so
    any number of connections can stream it at once."""

    def __init__(self, handle: tempfile._TemporaryFileWrapper[bytes], size: int) -> None:
        self._handle = handle
        self._size = size

    def __repr__(self) -> str:
        return f"<Spooled {self._size} bytes>"

    def __len__(self) -> int:
        return self._size

    def read(self, offset: int, count: int) -> bytes:
        """Up to `count` bytes from `offset` (blocking: call it in a thread)."""
        return os.pread(self._handle.fileno(), count, offset)

    def chunks(self, size: int) -> Iterator[tuple[int, int]]:
        """(offset, count) pairs that cover it, `size` bytes at a time."""
        for offset in range(0, self._size, size):
            yield offset, min(size, self._size - offset)

    def close(self) -> None:
        self._handle.close()


# One part of a message as it is written: bytes, or a large attachment streamed from its file.
Part = bytes | Spooled


def encoded_size(size: int) -> int:
    """Bytes of `size` bytes as base64 lines of 76 characters with CRLF."""
    lines = -(-size // _LINE)
    return -(-size // 3) * 4 + 2 * lines


def spool(path: Path) -> Spooled:
    """Encode a file as base64 lines with CRLF into a temporary file, a block at a time
    (blocking: call it in a thread).

    :raises OSError: the file cannot be read, or the temporary file written.
    """
    handle = tempfile.NamedTemporaryFile(prefix="asyncmailer-", suffix=".b64")  # noqa: SIM115
    try:
        size = 0
        with path.open("rb") as source:
            while block := source.read(_BLOCK):
                encoded = base64.encodebytes(block).replace(b"\n", b"\r\n")
                handle.write(encoded)
                size += len(encoded)
        handle.flush()
    except BaseException:
        handle.close()
        raise
    return Spooled(handle, size)


def check_filename(name: str, path: Path) -> None:
    """Refuse a name that would not arrive as it is on disk, or would mislead its reader:
    control characters (CR, LF, ESC...), invisible and bidirectional formatting characters
    (zero width, soft hyphen, right-to-left overrides), line and paragraph separators.

    :raises InputError: naming the file and the character.
    """
    if len(name) >= 2 and name[0] + name[-1] in ('""', "<>"):
        raise InputError(
            "the file name is in quotes or angle brackets, which mail clients drop; rename "
            "the file",
            path=path,
            field="attachments",
        )
    if name != name.strip():
        raise InputError(
            "the file name begins or ends with white space, which mail clients drop; "
            "rename the file",
            path=path,
            field="attachments",
        )
    for char in name:
        if unicodedata.category(char) in _SPOOFING:
            raise InputError(
                f"the file name holds U+{ord(char):04X} "
                f"({unicodedata.name(char, 'a control character')}), which would hide or "
                "change what the recipient sees; rename the file",
                path=path,
                field="attachments",
            )


def _list_files(folder: Path, follow_symlinks: bool) -> list[tuple[Path, str, int]]:
    """Regular files of `folder` (hidden ones and folders skipped), sorted by name, with
    their MIME type and size.

    :raises InputError: a FIFO, device or socket, or a link leading outside the folder (unless
        `follow_symlinks`), or to anything but a regular file.
    """
    root = folder.resolve()
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not follow_symlinks and not target.is_relative_to(root):
                    raise InputError(
                        f"a link to {target}, outside the attachments folder; copy the file "
                        "in, or set follow_symlinks: true",
                        path=path,
                        field="attachments",
                    )
            mode = entry.stat().st_mode  # the target's, for a link
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InputError(
                    "not a regular file (a FIFO, device or socket); only files are attached",
                    path=path,
                    field="attachments",
                )
            check_filename(entry.name, path)
            content_type, encoding = mimetypes.guess_type(entry.name, strict=False)
            if content_type is None or encoding is not None:
                content_type = "application/octet-stream"
            entries.append((path, content_type, entry.stat().st_size))
    return sorted(entries, key=lambda item: item[0].name)


async def load_attachments(
    folder: Path | None, *, follow_symlinks: bool = False
) -> list[Attachment]:
    """The attachments of `folder`: small files read now, without blocking the event loop;
    large ones (over `SPOOL_ABOVE`) named by path, to be encoded into a temporary file.

    :raises InputError: the folder or a file cannot be read, or may not be attached.
    """
    if folder is None:
        return []
    try:
        listing = await asyncio.to_thread(_list_files, folder, follow_symlinks)
    except OSError as err:
        raise InputError(
            f"cannot list the attachments folder: {err.strerror}", path=folder, field="attachments"
        ) from err
    attachments = []
    for path, content_type, size in listing:
        if size > SPOOL_ABOVE:
            attachments.append(Attachment(path.name, content_type, source=path))
            continue
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as err:
            raise InputError(f"cannot read attachment: {err.strerror}", path=path) from err
        attachments.append(Attachment(path.name, content_type, data))
    return attachments
