"""kill -9 at random points, then resume, again and again: from what the server received, no
recipient is missing and none got two copies, except those the journal calls unknown."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

from asyncmailer.journal import JournalReader
from asyncmailer.ledger import JournalState
from asyncmailer.results import Status

from .conftest import CampaignFactory, plain_list_campaign, start_cli
from .faulty import Faults, FaultyServer

COUNT = 10_000


async def test_killed_and_resumed_run_delivers_each_recipient_once(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    server = await FaultyServer(Faults()).start()
    try:
        path = plain_list_campaign(
            make_campaign,
            server.port,
            (f"user{i}@example.com" for i in range(COUNT)),
            group_size=25,
            concurrency=4,
            retry_delay=0.01,
        )
        rng = random.Random(20261126)
        kills = 0
        started = time.monotonic()
        for attempt in range(12):
            process = await start_cli(
                "-c", str(path), "-q", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL
            )
            if attempt < 6:  # the first six runs are killed at a random point while sending
                target = len(server.delivered) + rng.randint(200, COUNT // 8)
                for _ in range(2000):  # at most 20 s
                    if len(server.delivered) >= target or process.returncode is not None:
                        break
                    await asyncio.sleep(0.01)
                if process.returncode is None:
                    os.kill(process.pid, signal.SIGKILL)
                    kills += 1
            _, err = await asyncio.wait_for(process.communicate(), 120)
            if process.returncode in (0, 1):
                break
            assert process.returncode == -signal.SIGKILL, err.decode()
        elapsed = time.monotonic() - started

        journal = path.parent.parent / ".asyncmailer" / "config.json.journal.sqlite"
        counts = await JournalReader(journal).counts()
        results = [r async for page in JournalReader(journal).pages() for r in page]
        unknown = {r.recipient for r in results if r.status is Status.UNKNOWN}
        copies = Counter(server.delivered)

        assert len(results) == COUNT
        assert counts[JournalState.ACCEPTED] + counts[JournalState.UNKNOWN] == COUNT, counts
        for result in results:
            if result.status is Status.ACCEPTED:
                assert copies[result.recipient] == 1, result
            else:
                assert copies[result.recipient] <= 1, result
        assert set(copies) <= {r.recipient for r in results}
        print(
            f"\n{COUNT} recipients, {kills} kill -9s, {elapsed:.1f} s: "
            f"{counts[JournalState.ACCEPTED]} accepted exactly once, {len(unknown)} unknown "
            f"({sum(copies[r] for r in unknown)} of them did arrive), "
            f"{sum(1 for n in copies.values() if n > 1)} duplicates"
        )
        assert kills == 6  # every kill interrupted real work
    finally:
        await server.stop()
