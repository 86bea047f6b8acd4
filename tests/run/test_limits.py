"""The rate across workers: two workers of one run on a real PostgreSQL ledger, each with
its own `SharedRateLimiter`, start no more messages together than the campaign's rate
allows (one batch each of slack)."""

from __future__ import annotations

import asyncio

from asyncmailer.ledger_url import LedgerUrl
from asyncmailer.run.limits import RateLimiter, SharedRateLimiter

RATE = 200.0  # messages per second, for both workers together


async def _starts(limiter: SharedRateLimiter | RateLimiter, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(count):
        await limiter.wait()
        times.append(loop.time())
    return times


async def test_two_workers_share_one_rate(pg_url: str) -> None:
    from asyncmailer.pg import PgLedger
    from asyncmailer.pg.runs import PgRuns

    url = LedgerUrl(pg_url)
    async with PgRuns(url, "paced") as runs:
        serial = runs.serial(await runs.begin(current={}))
    async with (
        await PgLedger.open(url, campaign="paced", run=serial) as a,
        await PgLedger.open(url, campaign="paced", run=serial) as b,
    ):
        limiters = [SharedRateLimiter(RATE, a), SharedRateLimiter(RATE, b)]
        assert limiters[0].batch == 50  # a quarter of a second's slots per reservation
        # Two coroutines per worker (connections), 100 messages each: 400 in all.
        found = await asyncio.gather(*(_starts(limiter, 100) for limiter in limiters * 2))
    starts = sorted(t for times in found for t in times)
    elapsed = starts[-1] - starts[0]
    # At most rate x elapsed + one batch per worker (what each reserved ahead).
    assert len(starts) <= RATE * elapsed + 1 + 2 * limiters[0].batch
    assert elapsed >= (400 - 2 * 50) / RATE * 0.98
    # Each slot is used once: no two starts closer than the interval, but for rounding
    # and the batch edges (the event loop may run two due sleeps in one turn).
    window = [starts[i + 40] - starts[i] for i in range(len(starts) - 40)]
    assert min(window) >= 40 / RATE * 0.8


async def test_one_process_rate_limiter_is_unchanged() -> None:
    limiter = RateLimiter(100.0)
    starts = await _starts(limiter, 21)
    assert starts[-1] - starts[0] >= 0.2 * 0.98
