"""The dispatcher's screen: suppressed recipients are recorded as such and never sent, checked
against the suppression file and the shared store as the work is claimed (a real server)."""

from __future__ import annotations

from collections.abc import Sequence
from email import policy
from email.parser import BytesParser
from pathlib import Path

from asyncmailer.config import load_campaign
from asyncmailer.journal.files import journal_path
from asyncmailer.journal.reader import JournalReader
from asyncmailer.journal.suppressions import Entry, SuppressionStore
from asyncmailer.ledger import JournalState
from asyncmailer.observer import Observer
from asyncmailer.results import RecipientResult, Status
from asyncmailer.run.campaign import RunOptions, run_campaign
from asyncmailer.suppression import Reason

from ..conftest import CampaignFactory, RunningServer, ServerFactory, list_campaign


def received(running: RunningServer) -> list[str]:
    """Every envelope recipient the server took, in order."""
    return [rcpt for message in running.messages for rcpt in message.rcpt_tos]


async def test_a_suppressed_address_and_domain_receive_nothing(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    addresses = [f"u{i}@example.com" for i in range(6)]
    addresses[1:1] = ["bob@example.org", "x@blocked.example", "Y@Blocked.Example"]
    addresses.append("unsubscribed@example.net")
    (tmp_path / "suppressed.txt").write_text(
        "# never to these\nBOB@example.org\n@BLOCKED.example  # the whole domain\n"
    )
    path = list_campaign(
        make_campaign,
        running.server.ssl_port,
        addresses,
        suppression_file="suppressed.txt",
        group_size=3,
    )
    campaign = await load_campaign(path, env={})
    await SuppressionStore.of(campaign.state_dir).add(
        [Entry("unsubscribed@example.net", Reason.UNSUBSCRIBE, campaign="october")]
    )
    told: list[RecipientResult] = []

    class Recording(Observer):
        async def results(self, results: Sequence[RecipientResult]) -> None:
            told.extend(results)

    report = await run_campaign(campaign, observer=Recording())

    sent = received(running)
    assert sorted(sent) == sorted(f"u{i}@example.com" for i in range(6))
    suppressed = {r.recipient: r.message for r in report.results if r.status is Status.SUPPRESSED}
    assert suppressed == {
        "bob@example.org": "suppressed: suppressed.txt line 2",
        "x@blocked.example": "suppressed: suppressed.txt line 3",
        "Y@Blocked.Example": "suppressed: suppressed.txt line 3",
        "unsubscribed@example.net": "suppressed: unsubscribe (october)",
    }
    assert report.counts == {Status.ACCEPTED: 6, Status.SUPPRESSED: 4}
    assert report.this_run == {Status.ACCEPTED: 6, Status.SUPPRESSED: 4}
    assert sorted(r.recipient for r in told if r.status is Status.SUPPRESSED) == sorted(suppressed)
    assert report.all_accepted  # nothing failed: exit 0
    assert report.problems == []  # not problems to show
    counts = await JournalReader(journal_path(campaign.state_dir, campaign.id)).counts()
    assert counts == {JournalState.ACCEPTED: 6, JournalState.SUPPRESSED: 4}
    # A group with a suppressed recipient went without it; none went empty.
    assert all(message.rcpt_tos for message in running.messages)
    assert len(running.messages) == 3  # groups of 3: [u0 . .] [. u1 u2] [u3 u4 u5] + [.]


async def test_a_suppressed_to_or_cc_leaves_the_envelope_not_the_header(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "suppressed.txt").write_text("bob@example.org\n")
    path = make_campaign(port=running.server.ssl_port, suppression_file="suppressed.txt")
    report = await run_campaign(await load_campaign(path, env={}))

    [message] = running.messages
    assert message.rcpt_tos == ("alice@example.com", "carol@example.net")
    parsed = BytesParser(policy=policy.default).parsebytes(message.data)
    assert "bob@example.org" in str(parsed["To"])  # the message is the same for everyone
    assert {r.recipient: r.status for r in report.results} == {
        "alice@example.com": Status.ACCEPTED,
        "bob@example.org": Status.SUPPRESSED,
        "carol@example.net": Status.ACCEPTED,
    }


async def test_a_resumed_run_honours_entries_added_since(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.com\nc@example.com\n")
    path = make_campaign(
        port=running.server.ssl_port, to=None, cc=None, recipients_file="list.txt", group_size=1
    )
    campaign = await load_campaign(path, env={})
    first = await run_campaign(campaign, options=RunOptions(limit=1))
    assert first.limit_reached and received(running) == ["a@example.com"]
    assert first.counts == {Status.ACCEPTED: 1, Status.NOT_ATTEMPTED: 2}

    # While the run is stopped, c unsubscribes: the pending row must not go.
    await SuppressionStore.of(campaign.state_dir).add([Entry("c@example.com", Reason.UNSUBSCRIBE)])
    second = await run_campaign(campaign)

    assert received(running) == ["a@example.com", "b@example.com"]
    assert second.counts == {Status.ACCEPTED: 2, Status.SUPPRESSED: 1}
    assert second.this_run == {Status.ACCEPTED: 1, Status.SUPPRESSED: 1}


async def test_shared_suppression_false_ignores_the_store(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("a@example.com\nb@example.com\n")
    (tmp_path / "suppressed.txt").write_text("a@example.com\n")
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.txt",
        suppression_file="suppressed.txt",
        shared_suppression=False,
    )
    campaign = await load_campaign(path, env={})
    await SuppressionStore.of(campaign.state_dir).add([Entry("b@example.com", Reason.MANUAL)])
    report = await run_campaign(campaign)

    assert received(running) == ["b@example.com"]  # the store's entry is not honoured
    assert report.counts == {Status.ACCEPTED: 1, Status.SUPPRESSED: 1}  # the file's is


async def test_every_recipient_suppressed_sends_nothing(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "suppressed.txt").write_text("@example.com\n@example.org\n@example.net\n")
    path = make_campaign(port=running.server.ssl_port, suppression_file="suppressed.txt")
    report = await run_campaign(await load_campaign(path, env={}))

    assert running.messages == [] and running.recorder.lines() == []  # not even a connection
    assert report.counts == {Status.SUPPRESSED: 3}
    assert report.all_accepted and report.messages == 0


async def test_a_claim_all_suppressed_does_not_end_the_run(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    # A claim is up to 64 groups here: the first ones all suppressed, the rest still to send.
    running = await smtp_server()
    rows = [f"u{i}@blocked.example" for i in range(150)] + ["a@example.com", "b@example.com"]
    (tmp_path / "suppressed.txt").write_text("@blocked.example\n")
    path = list_campaign(
        make_campaign,
        running.server.ssl_port,
        rows,
        suppression_file="suppressed.txt",
        group_size=1,
        concurrency=1,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert received(running) == ["a@example.com", "b@example.com"]
    assert report.counts == {Status.SUPPRESSED: 150, Status.ACCEPTED: 2}
