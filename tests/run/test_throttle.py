"""Adaptive throttling: the AIMD rule itself, and a run settling under a relay that throttles
above a rate of its own (a token bucket answering 421 4.7.0), over real sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.observer import Observer
from asyncmailer.run.campaign import RunOptions, run_campaign
from asyncmailer.run.throttle import CONNECTION_EVERY, DECREASE, FLOOR, RATE_STEP, Throttle

from ..faulty import Faults, FaultyServer


async def test_a_throttling_reply_cuts_the_rate_once_per_epoch() -> None:
    throttle = Throttle(ceiling=100.0, connections=4)
    epoch = await throttle.wait()
    late = await throttle.wait()  # begun in the same epoch: in flight when the cut comes
    assert throttle.throttled(epoch) is True
    assert throttle.rate == pytest.approx(100.0 * DECREASE)
    assert throttle.throttled(late) is False  # said nothing about the new rate
    assert throttle.rate == pytest.approx(100.0 * DECREASE) and throttle.signals == 2
    assert throttle.throttled(await throttle.wait()) is True
    assert throttle.rate == pytest.approx(100.0 * DECREASE**2) and throttle.cuts == 2


async def test_accepted_messages_grow_the_rate_back_up_to_the_ceiling() -> None:
    throttle = Throttle(ceiling=50.0, connections=2)
    throttle.throttled(await throttle.wait())
    assert throttle.rate == pytest.approx(40.0)
    for _ in range(40):  # a second's worth at 40/s: RATE_STEP more
        throttle.accepted()
    assert throttle.rate == pytest.approx(40.0 + RATE_STEP, rel=0.05)
    for _ in range(10_000):
        throttle.accepted()
    assert throttle.rate == 50.0  # never above the ceiling


def test_the_rate_never_falls_below_the_floor() -> None:
    throttle = Throttle(ceiling=2.0, connections=1)
    for _ in range(50):
        throttle.throttled(throttle.epoch)  # each begun after the last cut
    assert throttle.rate == FLOOR


async def test_without_a_ceiling_the_first_cut_is_from_the_rate_sent() -> None:
    throttle = Throttle(ceiling=None, connections=1)
    unpaced = throttle.paced
    for _ in range(30):
        epoch = await throttle.wait()  # unpaced: at once
    await asyncio.sleep(0.1)
    throttle.throttled(epoch)
    rate = throttle.rate
    assert not unpaced and throttle.paced and rate is not None
    assert 30 * DECREASE / 0.5 < rate <= 30 * DECREASE / 0.1


def test_refused_connections_shrink_the_count_and_accepted_messages_restore_it() -> None:
    throttle = Throttle(ceiling=None, connections=5)
    throttle.refused_connection()
    assert throttle.connections == 3
    throttle.refused_connection()
    throttle.refused_connection()
    throttle.refused_connection()
    assert throttle.connections == 1  # never none
    for _ in range(CONNECTION_EVERY):
        throttle.accepted()
    assert throttle.connections == 2
    for _ in range(CONNECTION_EVERY * 100):
        throttle.accepted()
    assert throttle.connections == 5  # never above the ceiling


class Rates(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, float | None, int]] = []

    async def relay(self, name: str, rate: float | None, connections: int) -> None:
        self.seen.append((name, rate, connections))


async def test_a_run_settles_near_the_rate_a_throttling_relay_takes(tmp_path: Path) -> None:
    # The relay takes 100 messages/s (10 at once) and answers 421 4.7.0 above; the campaign
    # asks for 1000/s. Settled, the run goes at about the relay's rate, with few refusals.
    server = await FaultyServer(Faults(rate_limit=100, rate_burst=10)).start()
    try:
        count = 400
        (tmp_path / "msg.txt").write_text("Hello\n")
        (tmp_path / "list.txt").write_text("".join(f"r{i}@example.com\n" for i in range(count)))
        config = {
            "from": "sender@example.com",
            "subject": "throttled",
            "file_with_message": "msg.txt",
            "recipients_file": "list.txt",
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "group_size": 1,
            "concurrency": 4,
            "rate": 1000,
            "retry_delay": 0.5,
        }
        (tmp_path / "c.json").write_text(json.dumps(config))
        campaign = await load_campaign(tmp_path / "c.json", env={})
        rates = Rates()
        report = await asyncio.wait_for(
            run_campaign(campaign, observer=rates, options=RunOptions()), 60
        )
    finally:
        await server.stop()
    assert report.fatal is None and report.all_accepted
    assert sorted(server.delivered) == sorted(f"r{i}@example.com" for i in range(count))
    assert server.throttled <= count // 10  # refused for a few, not most of the run
    later = server.accepted_at[count // 2 :]
    settled = (len(later) - 1) / (later[-1] - later[0])
    assert 70 <= settled <= 125
    assert rates.seen[0] == (f"127.0.0.1:{server.port}", 1000.0, 4)
    assert any(rate is not None and rate < 130 for _, rate, _ in rates.seen)
