"""The dry-run transport: every message that would be sent is written as an ``.eml`` file,
with its envelope in ``envelopes.jsonl`` beside it; nothing goes to a server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from .attachments import Part, Spooled
from .errors import InputError
from .results import RecipientResult, Status
from .transport import Commit, Sent, Transaction

__all__ = ["ENVELOPES", "EmlTransport"]

ENVELOPES = "envelopes.jsonl"
_STUFFED = re.compile(rb"^\.", re.MULTILINE)


class EmlTransport:
    """Writes each transaction as ``NNNNNN.eml`` in `folder` (a new or empty folder) and one
    line of ``envelopes.jsonl``: the file, MAIL FROM and every RCPT TO. One connection, one
    transaction at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0  # messages written
        self.first: Path | None = None  # the first of them
        self.first_envelope: dict[str, object] | None = None  # its line of ENVELOPES
        self._one = asyncio.Lock()  # one connection: files numbered in the order sent

    def __repr__(self) -> str:
        return f"<EmlTransport {self.folder} written={self.count}>"

    @property
    def pipelines(self) -> bool:
        return False

    async def open(self) -> None:
        """Create the folder.

        :raises InputError: it cannot be created, or already holds messages.
        """

        def prepare() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if any(self.folder.glob("*.eml")) or (self.folder / ENVELOPES).exists():
                raise InputError(
                    "already holds messages of an earlier dry run; name a new or empty folder",
                    path=self.folder,
                )

        try:
            await asyncio.to_thread(prepare)
        except OSError as err:
            raise InputError(f"cannot create the folder: {err.strerror}", path=self.folder) from err

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[EmlTransport]:
        async with self._one:
            yield self

    async def close(self) -> None:
        """Nothing stays open between messages."""

    async def send(
        self, transaction: Transaction, *, commit: Commit | None = None, then: Transaction | None
    ) -> Sent:
        envelope, parts = transaction
        sender, recipients = envelope.sender, envelope.recipients
        path = self.folder / f"{self.count + 1:06d}.eml"
        entry: dict[str, object] = {
            "file": path.name,
            "mail_from": sender,
            "rcpt_to": list(recipients),
        }
        line = json.dumps(entry)
        if commit is not None:  # the contract: committed before the message is complete
            await commit()
        try:
            await asyncio.to_thread(_write, path, parts, self.folder / ENVELOPES, line)
        except OSError as err:  # a full disk: the dry run cannot go on
            raise InputError(f"cannot write the message: {err.strerror}", path=path) from err
        self.count += 1
        if self.first is None:
            self.first, self.first_envelope = path, entry
        note = f"in {path}"
        return Sent([RecipientResult(r, Status.ACCEPTED, None, note) for r in recipients])


def _write(path: Path, parts: Sequence[Part], index: Path, line: str) -> None:
    with path.open("wb") as message:
        for part in parts:
            if isinstance(part, Spooled):  # base64 lines: nothing stuffed in them
                for offset, count in part.chunks(1 << 20):
                    message.write(part.read(offset, count))
            else:  # stuffed for DATA (each part is whole lines): a file holds it as it is
                message.write(_STUFFED.sub(b"", part))
    with index.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
