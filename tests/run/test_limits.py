"""The limits across workers: two workers of one run on a real PostgreSQL ledger, each with
its own `SharedRateLimiter` and `DailyQuota`, start no more messages together than the
campaign's rate allows (one batch each of slack), and try no more recipients together than
its daily quota."""

from __future__ import annotations

import asyncio

from asyncmailer.ledger_url import LedgerUrl
from asyncmailer.run.limits import DailyQuota, RateLimiter, SharedRateLimiter

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
    from asyncmailer.run_choice import RunRequest

    url = LedgerUrl(pg_url)
    async with PgRuns(url, "paced") as runs:
        serial = runs.serial(await runs.begin(RunRequest(campaign="paced", current={})))
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


async def test_two_workers_share_one_daily_quota(pg_url: str) -> None:
    from asyncmailer.pg import PgLedger
    from asyncmailer.pg.runs import PgRuns
    from asyncmailer.run_choice import RunRequest

    url = LedgerUrl(pg_url)
    async with PgRuns(url, "quota") as runs:
        serial = runs.serial(await runs.begin(RunRequest(campaign="quota", current={})))
    async with (
        await PgLedger.open(url, campaign="quota", run=serial) as a,
        await PgLedger.open(url, campaign="quota", run=serial) as b,
    ):
        quotas = [DailyQuota(100, a), DailyQuota(100, b)]
        for quota in quotas:
            await quota.load()
        assert quotas[0].batch == 5
        granted = 0
        going = [True, True]
        while any(going):  # taking turns, 3 recipients at a time, until neither may
            for i, quota in enumerate(quotas):
                if going[i] and await quota.take(3):
                    granted += 3
                else:
                    going[i] = False
        assert 100 - 2 * 3 < granted <= 100  # together within the quota, little left over
        quotas[0].give_back(3)  # a group not sent after all: back to this worker's part
        granted -= 3
        for quota in quotas:
            quota.release()  # what was reserved and not spent goes back
        day = quotas[0].day
        await b.sent_on(day)  # each worker's writes run in order: b's are in
        assert await a.sent_on(day) == granted
        # A new worker of the campaign gets only what is left.
        late = DailyQuota(100, b)
        await late.load()
        assert await late.take(100 - granted) and not await late.take(1)
