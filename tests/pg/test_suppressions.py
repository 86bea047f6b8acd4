"""The suppression store of a shared ledger, as workers on two hosts see it: an address
suppressed from one host is not sent to by a worker on the other, and a run's bounces are
added where every host reads them (the store's own contract: tests/journal/test_suppressions.py,
run against both kinds)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..conftest import CampaignFactory, plain_list_campaign, run_cli
from ..faulty import Faults, FaultyServer
from ..postgres import PASSWORD


async def test_a_suppression_made_on_one_host_holds_for_a_worker_on_another(
    make_campaign: CampaignFactory, tmp_path: Path, pg_url: str
) -> None:
    server = await FaultyServer(Faults(rcpt={"gone@example.com": "550 5.1.1 User unknown"})).start()
    try:
        addresses = [f"u{i}@example.com" for i in range(10)]
        here = plain_list_campaign(
            make_campaign,
            server.port,
            [*addresses, "gone@example.com", "Left@Example.com"],
            ledger=pg_url,
            campaign="shared-suppressions",
        )
        # Another host: the same campaign files in another folder, with a state folder of its own.
        there_root = tmp_path / "other-host"
        there_root.mkdir()
        for name in ("reliances", "files", "list.txt"):
            source = tmp_path / name
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            copy(source, there_root / name)
        there = there_root / "reliances" / here.name

        code, out, err = await run_cli(
            "suppress", "add", "-c", str(here), "left@example.com", cwd=tmp_path
        )
        assert code == 0, err
        assert "added 1 entry to the ledger postgresql://postgres:********@" in out, out
        code, out, err = await run_cli("worker", str(there), "-q", cwd=there_root)
        assert code == 1, err  # gone@ refused
        assert sorted(server.delivered) == sorted(addresses)
        # The bounce went into the ledger's store: the first host lists it.
        code, out, err = await run_cli("suppress", "list", "-c", str(here), cwd=tmp_path)
        assert code == 0, err
        rows = [line.split()[:2] for line in out.splitlines()[1:-1]]
        assert rows == [["gone@example.com", "bounce"], ["left@example.com", "manual"]], out
        assert "550 5.1.1  shared-suppressions" in out
        assert PASSWORD not in out + err
        for root in (tmp_path, there_root):
            assert not list(root.rglob("suppressions.sqlite*"))
    finally:
        await server.stop()
