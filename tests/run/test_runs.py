"""Runs of a campaign through the command line: an edited campaign is noticed, an unfinished
run resumes (or starts over when asked), two campaigns of one file name cannot mix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from asyncmailer.config import load_campaign
from asyncmailer.journal.runs import RunCatalog, RunRecord

from ..conftest import CampaignFactory, ServerFactory, run_cli


def list_of_three(make_campaign: CampaignFactory, port: int, tmp_path: Path) -> Path:
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.com\nc@example.com\n")
    return make_campaign(port=port, to=None, cc=None, recipients_file="list.txt", group_size=1)


async def test_an_unfinished_run_of_an_edited_campaign_stops_and_names_both_ways_on(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_of_three(make_campaign, running.server.ssl_port, tmp_path)
    code, _, err = await run_cli("send", str(path), "--limit", "1", "-q", cwd=tmp_path)
    assert code == 75, err
    (tmp_path / "reliances" / "msg.txt").write_text("A new text.\n")

    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 2
    assert "is not finished, and the campaign changed since it began (message)" in err
    assert "add --continue" in err and "add --new-run" in err
    assert len(running.messages) == 1  # nothing more went out

    code, _, err = await run_cli("send", str(path), "--continue", "-q", cwd=tmp_path)
    assert code == 0, err
    assert sorted(r for m in running.messages for r in m.rcpt_tos) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert [b"A new text." in m.data for m in running.messages] == [False, True, True]


async def test_an_edited_finished_campaign_says_what_changed(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, subject="First")
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    path = make_campaign(port=running.server.ssl_port, subject="Second")
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 4
    assert "it changed since (subject). To send the new version to everyone: add --new-run" in err
    assert (await run_cli("send", str(path), "--new-run", "-q", cwd=tmp_path))[0] == 0
    assert len(running.messages) == 2


async def test_two_campaigns_of_one_file_name_in_one_state_folder_do_not_mix(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, state_dir=str(tmp_path / "state"))
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    other = tmp_path / "other" / "reliances"
    other.mkdir(parents=True)
    twin = other / "config.json"
    twin.write_text(path.read_text())
    for name in ("msg.txt", "your_pswd.txt"):
        (other / name).write_bytes((path.parent / name).read_bytes())
    (tmp_path / "other" / "files").mkdir()
    (other / "your_pswd.txt").chmod(0o600)
    code, _, err = await run_cli("send", str(twin), "-q", cwd=tmp_path)
    assert code == 2
    assert "holds the runs of another campaign named 'config.json'" in err
    assert len(running.messages) == 1


async def test_addresses_added_to_a_finished_campaigns_list_are_sent_alone(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_of_three(make_campaign, running.server.ssl_port, tmp_path)
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    with (tmp_path / "list.txt").open("a") as handle:
        handle.write("d@example.com\n")
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    delivered = [r for m in running.messages for r in m.rcpt_tos]
    assert sorted(delivered) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]


async def test_a_list_read_another_way_is_a_changed_list(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    # The same file read with another column (or delimiter, or encoding) is another list:
    # its new addresses go, not "sent already".
    running = await smtp_server()
    (tmp_path / "list.csv").write_text(
        "email;work\na@example.com;a@work.example\nb@example.com;b@work.example\n"
    )
    settings = dict(port=running.server.ssl_port, to=None, cc=None, recipients_file="list.csv")
    path = make_campaign(**settings, recipients_delimiter=";")
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    path = make_campaign(**settings, recipients_delimiter=";", recipients_column="work")
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    assert [sorted(m.rcpt_tos) for m in running.messages] == [
        ["a@example.com", "b@example.com"],
        ["a@work.example", "b@work.example"],
    ]


async def test_a_project_moved_whole_resumes_and_a_new_campaign_id_is_refused(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_of_three(make_campaign, running.server.ssl_port, tmp_path)
    code, _, err = await run_cli("send", str(path), "--limit", "1", "-q", cwd=tmp_path)
    assert code == 75, err
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    tmp_path.rename(moved)
    try:
        target = moved / "reliances" / "config.json"
        code, _, err = await run_cli("send", str(target), "-q", cwd=moved)
        assert code == 0, err
        assert len(running.messages) == 3  # the other two, nobody twice
        # A campaign id given later would name a new journal and send to everyone again.
        config = target.read_text().replace("{", '{"campaign": "news", ', 1)
        target.write_text(config)
        code, _, err = await run_cli("send", str(target), "--new-run", "-q", cwd=moved)
        assert code == 2 and "still named after its file" in err
        assert len(running.messages) == 3
    finally:
        moved.rename(tmp_path)


async def test_the_daily_quota_is_the_campaigns_not_each_runs(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.com\nc@example.com\n")
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        bcc=None,
        recipients_file="list.txt",
        group_size=1,
        daily_quota=2,
    )
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 75 and "daily quota of 2 recipients reached" in err
    code, _, err = await run_cli("send", str(path), "--new-run", "-q", cwd=tmp_path)
    assert code == 75, err  # today's quota was spent by the first run
    assert len(running.messages) == 2


async def test_a_content_fingerprint_ignores_times_and_sees_bytes(
    make_campaign: CampaignFactory,
) -> None:
    # A shared ledger's workers are on hosts with their own copies: the list and the
    # attachments count by their bytes, not by when each copy was written.
    import os

    from asyncmailer.config import load_campaign
    from asyncmailer.run.runs import fingerprint

    path = make_campaign(files={"a.txt": b"one"}, recipients_file="list.txt")
    listing = path.parent.parent / "list.txt"
    listing.write_text("a@example.com\n")
    campaign = await load_campaign(path, env={})
    before = fingerprint(campaign, content=True)
    plain = fingerprint(campaign)
    for file in (listing, path.parent.parent / "files" / "a.txt"):
        os.utime(file, (1, 1))  # another host's copy: other times
    assert fingerprint(campaign, content=True) == before
    assert fingerprint(campaign) != plain  # the journal's own fingerprint sees times
    listing.write_text("b@example.com\n")
    changed = fingerprint(campaign, content=True)
    assert [p for p in before if before[p] != changed[p]] == ["list"]


async def test_a_crash_between_the_runs_file_and_the_journals_rename_is_finished_next_start(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_of_three(make_campaign, running.server.ssl_port, tmp_path)
    assert (await run_cli("send", str(path), "-q", cwd=tmp_path))[0] == 0
    # What a new run's begin() leaves when the process dies between its two steps: the runs
    # file names the new run and the first run's new journal name, the rename not done.
    campaign = await load_campaign(path, env={})
    catalog = RunCatalog(campaign.state_dir, campaign.id)
    found = catalog.load()
    (first,) = found.runs
    aside = catalog.set_aside_name(first)
    second = RunRecord(
        id="20991231T000000Z",
        started="2099-12-31T00:00:00Z",
        journal=catalog.journal.name,
        fingerprint=first.fingerprint,
    )
    catalog.save(found.source, [replace(first, journal=aside), second], setting_aside=aside)
    assert catalog.journal.exists() and not (catalog.state_dir / aside).exists()

    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    # The second run went on with a journal of its own: everyone got it once more, not zero.
    delivered = sorted(r for m in running.messages[3:] for r in m.rcpt_tos)
    assert delivered == ["a@example.com", "b@example.com", "c@example.com"]
    after = catalog.load()
    assert after.setting_aside is None
    assert [r.id for r in after.runs] == [first.id, second.id]
    assert (catalog.state_dir / aside).exists()  # the first run's journal, under its new name
