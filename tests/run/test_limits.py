"""The limits across workers: two workers of one run on a real PostgreSQL ledger, each with
its own `SharedRateLimiter` and `DailyQuota`, start no more messages together than the
campaign's rate allows (one batch each of slack), and try no more recipients together than
its daily quota."""

from __future__ import annotations

import asyncio
import time

from asyncmailer.run.limits import DailyQuota, Pause, RateLimiter, SharedRateLimiter

from ..conftest import two_workers

RATE = 200.0  # messages per second, for both workers together


async def _starts(limiter: SharedRateLimiter | RateLimiter, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(count):
        await limiter.wait()
        times.append(loop.time())
    return times


async def test_two_workers_share_one_rate(pg_url: str) -> None:
    async with two_workers(pg_url, "paced") as (a, b):
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
    async with two_workers(pg_url, "quota") as (a, b):
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


async def test_a_relays_own_limits_are_kept_apart_from_the_campaigns(pg_url: str) -> None:
    # `servers:` relays have their own rate, daily_quota and max_connections, held by every
    # worker together under the relay's key, and never counted against the campaign's.
    async with two_workers(pg_url, "relays") as (a, b):
        relay = [DailyQuota(40, a, key="@one"), DailyQuota(40, b, key="@one")]
        campaign = DailyQuota(100, a)
        for quota in (*relay, campaign):
            await quota.load()
        taken = 0
        while await relay[taken % 2].take(4) or await relay[(taken + 1) % 2].take(4):
            taken += 1
        assert 40 - 2 * 4 < taken * 4 <= 40  # the relay's quota, for both workers
        assert await campaign.take(100)  # the campaign's is all there still
        for quota in (*relay, campaign):
            quota.release()
        day = campaign.day
        await b.sent_on(day)
        assert await a.sent_on(day + "@one") == taken * 4
        assert await a.sent_on(day) == 100
        # Connections: the relay's 4 shared by the workers, the campaign's apart.
        assert await a.reserve_connections({"@one": (3, 4)}) == {"@one": 3}
        assert await b.reserve_connections({"@one": (3, 4)}) == {"@one": 1}
        assert await b.reserve_connections({"": (3, 4), "@two": (3, 4)}) == {"": 3, "@two": 3}
        # Rates: the relay's slots are shared by both workers; the campaign's run apart.
        shared = [SharedRateLimiter(RATE, a, key="@one"), SharedRateLimiter(RATE, b, key="@one")]
        own = SharedRateLimiter(RATE, a)
        loop = asyncio.get_running_loop()
        began = loop.time()
        both, alone = await asyncio.gather(
            asyncio.gather(*(_starts(limiter, 100) for limiter in shared)),
            _starts(own, 100),
        )
        together = sorted(t for times in both for t in times)
        assert together[-1] - began >= (200 - 2 * shared[0].batch) / RATE * 0.98
        assert alone[-1] - began < (together[-1] - began) * 0.75  # not slowed by the relay's


async def test_a_pause_waits_on_the_monotonic_clock_not_the_wall_clock() -> None:
    # On the wall clock, a clock set back an hour during a 1 s pause made it an hour long.
    pause = Pause(delay=0.2, ceiling=1.0, threshold=1, deadline=time.monotonic() + 5)
    assert pause.hit() == 0.0  # within the threshold: no wait
    wait = pause.hit()
    assert wait == 0.2
    assert abs(pause.until - (time.monotonic() + wait)) < 0.1
    began = time.monotonic()
    await pause.wait(asyncio.Event())
    assert 0.15 < time.monotonic() - began < 1.0
    # Past the deadline (monotonic too), it gives up rather than wait.
    late = Pause(delay=10.0, ceiling=10.0, threshold=0, deadline=time.monotonic() + 5)
    assert late.hit() is None
