"""Config loading: the original keys as-is, the new keys, and one clear line for every mistake."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.config import (
    DKIM_BY_RELAY,
    PASSWORD_ENV,
    AuthMethod,
    DkimSettings,
    JournalSync,
    Secret,
    Security,
    campaign_root,
    load_campaign,
)
from asyncmailer.errors import ConfigError, InputError
from asyncmailer.ledger_url import LEDGER_ENV

from .conftest import PASSWORD, SUBJECT, CampaignFactory
from .dkimkeys import Kind, key_text, pem, record, write_key

ORIGINAL_KEYS = ("subject", "attachments", "file_with_message", "to", "from", "cc")


async def test_original_config_reads_as_is(make_campaign: CampaignFactory, tmp_path: Path) -> None:
    # Exactly the original six keys, nothing else.
    path = make_campaign(host=None, tls_ca_file=None)
    assert set(json.loads(path.read_text())) == set(ORIGINAL_KEYS)
    campaign = await load_campaign(path, env={})

    assert campaign.subject == SUBJECT
    assert campaign.root == tmp_path  # the folder above reliances/
    assert campaign.message_file == tmp_path / "reliances" / "msg.txt"
    assert campaign.attachments_dir == tmp_path / "files"
    assert campaign.sender == Mailbox("sender@example.com")
    assert [m.addr for m in campaign.to] == ["alice@example.com", "bob@example.org"]
    assert [m.addr for m in campaign.cc] == ["carol@example.net"]
    server = campaign.server
    # The original program's server: SSL on 465; the host follows the sender's domain.
    assert (server.host, server.port, server.security) == ("smtp.example.com", 465, Security.SSL)
    assert server.username == "sender@example.com"
    assert server.password == Secret(PASSWORD)
    assert server.tls_verify is True
    assert any("no host in the config" in n for n in campaign.notices)


async def test_new_keys(make_campaign: CampaignFactory, certs: object) -> None:
    path = make_campaign(
        host="127.0.0.1",
        security="starttls",
        username="login-name",
        bcc=["archive@example.com", "Alice <ALICE@example.com>"],
        concurrency=8,
        timeout=12.5,
    )
    campaign = await load_campaign(path, env={})
    assert campaign.server.port == 587
    assert campaign.server.security is Security.STARTTLS
    assert campaign.server.username == "login-name"
    assert campaign.server.timeout == 12.5
    assert campaign.concurrency == 8
    # alice appears in to and (upper-cased) in bcc: sent once.
    assert [m.addr for m in campaign.recipients] == [
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
        "archive@example.com",
    ]


async def test_yaml_campaign_has_the_same_keys(make_campaign: CampaignFactory) -> None:
    path = make_campaign(suffix=".yaml", port=2465, to=["alice@example.com"])
    campaign = await load_campaign(path, env={})
    assert campaign.subject == SUBJECT
    assert campaign.server.port == 2465
    assert campaign.server.security is Security.SSL
    assert [m.addr for m in campaign.to] == ["alice@example.com"]


async def test_config_outside_reliances_resolves_from_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "body.txt").write_text("hi")
    path = tmp_path / "campaign.yml"
    path.write_text(
        "subject: s\nfrom: a@example.com\nto: b@example.com\nfile_with_message: body.txt\n"
    )
    campaign = await load_campaign(path, env={})
    assert campaign.message_file == tmp_path / "body.txt"
    assert campaign.attachments_dir is None
    assert campaign.server.password is None  # no password file: send without AUTH
    assert campaign_root(path) == tmp_path


async def test_password_from_environment_wins(make_campaign: CampaignFactory) -> None:
    campaign = await load_campaign(make_campaign(), env={PASSWORD_ENV: "from-env"})
    assert campaign.server.password == Secret("from-env")


async def test_the_ledger_from_the_environment_wins_and_its_password_is_masked(
    make_campaign: CampaignFactory,
) -> None:
    keyed = await load_campaign(make_campaign(ledger="postgresql://m:pw1@db/mail"), env={})
    assert keyed.ledger is not None and "pw1" not in repr(keyed)
    env = {LEDGER_ENV: "postgresql://m:pw2@other/mail"}
    campaign = await load_campaign(make_campaign(ledger="postgresql://m:pw1@db/mail"), env=env)
    assert campaign.ledger is not None and campaign.ledger.reveal().endswith("@other/mail")
    assert "pw2" not in repr(campaign) and "pw2" not in str(campaign.ledger)
    assert (await load_campaign(make_campaign(), env={})).ledger is None
    with pytest.raises(ConfigError, match=f"^{LEDGER_ENV}: expected a postgresql://"):
        await load_campaign(make_campaign(), env={LEDGER_ENV: "sqlite:///x"})


async def test_password_file_readable_by_others_warns(make_campaign: CampaignFactory) -> None:
    path = make_campaign()
    (path.parent / "your_pswd.txt").chmod(0o644)
    campaign = await load_campaign(path, env={})
    assert any("readable by other users" in n and "chmod 600" in n for n in campaign.notices)
    assert all(PASSWORD not in n for n in campaign.notices)


async def test_tls_verify_false_only_when_written(make_campaign: CampaignFactory) -> None:
    campaign = await load_campaign(make_campaign(tls_verify=False), env={})
    assert campaign.server.tls_verify is False
    assert any("tls_verify is false" in n for n in campaign.notices)
    with pytest.raises(ConfigError, match="tls_verify: expected true or false"):
        await load_campaign(make_campaign(tls_verify="false"), env={})


@pytest.mark.parametrize(
    "name",
    ["mx1.example.com", "xn--bcher-kva.example", "3com.example", "[192.0.2.1]", "[IPv6:::1]"],
)
async def test_helo_name_takes_host_names_and_address_literals(
    make_campaign: CampaignFactory, name: str
) -> None:
    assert (await load_campaign(make_campaign(helo_name=name), env={})).server.helo_name == name
    trailing_dot = make_campaign(helo_name="mx1.example.com.")
    assert (await load_campaign(trailing_dot, env={})).server.helo_name == "mx1.example.com"
    assert (await load_campaign(make_campaign(), env={})).server.helo_name is None


async def test_plaintext_only_to_loopback(make_campaign: CampaignFactory) -> None:
    campaign = await load_campaign(make_campaign(security="none"), env={})
    assert (campaign.server.security, campaign.server.port) == (Security.NONE, 25)
    with pytest.raises(ConfigError, match="allowed only to loopback hosts"):
        await load_campaign(make_campaign(security="none", host="mail.example.com"), env={})
    forced = make_campaign(security="none", host="mail.example.com", allow_plaintext=True)
    assert (await load_campaign(forced, env={})).server.security is Security.NONE


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"colour": "red"}, "colour", "unknown key (known keys: subject, from,"),
        ({"atachments": "files"}, "atachments", "unknown key; did you mean 'attachments'?"),
        ({"group-size": 10}, "group-size", "unknown key; did you mean 'group_size'?"),
        ({"port": "465"}, "port", "expected a whole number from 1 to 65535, got '465'"),
        ({"port": 70000}, "port", "expected a whole number from 1 to 65535"),
        ({"concurrency": 0}, "concurrency", "expected a whole number from 1 to 1000"),
        ({"timeout": -1}, "timeout", "expected a number of seconds above 0"),
        ({"security": "tls"}, "security", "expected one of ssl, starttls, none, got 'tls'"),
        ({"subject": "Hi\r\nBcc: evil@example.com"}, "subject", "contains a line break (CR/LF)"),
        ({"from": "me@example.com\nBcc: x@example.com"}, "from", "contains a line break"),
        ({"to": "alice@example.com, bob@exa mple.com"}, "to", "'bob@exa mple.com' contains"),
        ({"cc": 5}, "cc", "expected a comma-separated string or a list"),
        ({"subject": ["a"]}, "subject", "expected a string, got a list"),
        ({"to": "", "cc": ""}, "to", "no recipients"),
        ({"file_with_message": "reliances/nope.txt"}, "file_with_message", "file not found"),
        ({"attachments": "missing"}, "attachments", "folder not found"),
        ({"tls_ca_file": "nope.pem"}, "tls_ca_file", "file not found"),
        ({"password_file": "nope.txt"}, "password_file", "file not found"),
        ({"recipients_file": "nope.csv"}, "recipients_file", "file not found"),
        ({"group_size": 0}, "group_size", "expected a whole number from 1 to 10000"),
        ({"rate": "10 per fortnight"}, "rate", "expected messages per second"),
        ({"rate": "10/fortnight"}, "rate", "expected messages per second"),
        ({"rate": "10/ms"}, "rate", "expected messages per second"),
        ({"rate": 0}, "rate", "above 0"),
        ({"pipelining": "yes"}, "pipelining", "expected true or false, got a string"),
        ({"max_connections": 0}, "max_connections", "expected a whole number from 1"),
        ({"journal_sync": "off"}, "journal_sync", "expected one of full, normal, got 'off'"),
        ({"journal_sync": False}, "journal_sync", "expected one of full, normal, got false"),
        ({"ledger": "mysql://db/mail"}, "ledger", "expected a postgresql://user@host"),
        ({"ledger": 5}, "ledger", "expected a string, got a number"),
        ({"rate": float("nan")}, "rate", "expected messages per second, or"),
        ({"rate": float("inf")}, "rate", "got inf"),
        ({"timeout": float("nan")}, "timeout", "expected a number of seconds"),
        ({"retry_delay": float("inf")}, "retry_delay", "expected a number of seconds"),
        (
            {"security": "x" * 10_000},
            "security",
            "got '" + "x" * 40 + "'...",
        ),
        ({"port": [[1] * 50] * 50}, "port", "expected a whole number from 1 to 65535, got a list"),
        ({"auth": "cram-md5"}, "auth", "expected one of login, plain, xoauth2"),
        ({"auth": "xoauth2"}, "auth", "xoauth2 needs the access token: give token_file or"),
        ({"auth": "xoauth2", "token_file": "t", "token_command": "x"}, "auth", "(one)"),
        ({"token_command": "get-token"}, "token_command", "goes with auth: xoauth2"),
        ({"auth": "plain", "token_file": "t"}, "token_file", "goes with auth: xoauth2"),
        ({"auth": "xoauth2", "token_file": "nope.txt"}, "token_file", "file not found"),
        ({"auth": "xoauth2", "token_command": "a 'b"}, "token_command", "cannot split"),
        ({"auth": "xoauth2", "token_command": ["a", 1]}, "token_command", "a list of strings"),
        ({"auth": "xoauth2", "token_command": " "}, "token_command", "got nothing"),
        (
            {"auth": "xoauth2", "token_command": "x", "password_file": "reliances/your_pswd.txt"},
            "password_file",
            "not used with auth: xoauth2",
        ),
        ({"helo_name": "my host"}, "helo_name", "expected a host name (mail.example.com)"),
        ({"helo_name": "mx.example.com\r\nRSET"}, "helo_name", "not 'mx.example.com\\r\\nRSET'"),
        ({"helo_name": "-bad-.example.com"}, "helo_name", "expected a host name"),
        ({"helo_name": "a..example.com"}, "helo_name", "expected a host name"),
        ({"helo_name": "[not-an-address]"}, "helo_name", "or an address in brackets"),
        ({"helo_name": "[999.1]"}, "helo_name", "expected an address in brackets, [192.0.2.1]"),
        ({"helo_name": "[IPv6:192.0.2.1]"}, "helo_name", "expected an address in brackets"),
        ({"helo_name": "[::1]"}, "helo_name", "or [IPv6:2001:db8::1]"),
        ({"helo_name": "192.0.2.1"}, "helo_name", "put an address in brackets ([192.0.2.1])"),
        ({"helo_name": "a" * 300 + ".example"}, "helo_name", "expected a host name"),
        ({"helo_name": "bücher.example"}, "helo_name", "in its xn-- form"),
        ({"helo_name": 5}, "helo_name", "expected a string, got a number"),
    ],
)
async def test_bad_keys_give_one_line_with_file_line_and_key(
    make_campaign: CampaignFactory, keys: dict[str, object], key: str, reason: str
) -> None:
    path = make_campaign(**keys)
    with pytest.raises(InputError) as caught:
        await load_campaign(path, env={})
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.field == key
    quoted = '"' + key + '"'
    assert message.startswith(f"{path}:{line_of(path, quoted)}: {key}: ")
    assert reason in message


async def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "subject": "x",\n  "to": "a@example.com"\n  "from": "b@example.com"\n}')
    with pytest.raises(ConfigError) as caught:
        await load_campaign(path, env={})
    assert str(caught.value) == f"{path}:4:3: invalid JSON: Expecting ',' delimiter"


async def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text("subject: x\nto: [a@example.com\nfrom: b@example.com\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3:5: invalid YAML: "):
        await load_campaign(path, env={})


async def test_duplicate_json_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"to": "a@example.com", "to": "b@example.com"}')
    with pytest.raises(ConfigError, match="duplicate key 'to'"):
        await load_campaign(path, env={})


async def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        await load_campaign(path, env={})


async def test_missing_or_binary_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        await load_campaign(tmp_path / "none.json", env={})
    path = tmp_path / "config.json"
    path.write_bytes(b'{"subject": "\xff"}')
    with pytest.raises(InputError, match=rf"{path}:1: not valid UTF-8"):
        await load_campaign(path, env={})


async def test_duplicate_json_key_names_the_second_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n "to": "a@example.com",\n "to": "b@example.com"\n}')
    with pytest.raises(ConfigError) as caught:
        await load_campaign(path, env={})
    assert str(caught.value) == f"{path}:3: invalid JSON: duplicate key 'to'"


async def test_semicolon_separated_addresses_get_a_hint(make_campaign: CampaignFactory) -> None:
    path = make_campaign(to="alice@example.com; bob@example.org")
    with pytest.raises(ConfigError, match="separate addresses with commas, not semicolons"):
        await load_campaign(path, env={})


async def test_multiline_password_from_env_names_the_env(make_campaign: CampaignFactory) -> None:
    with pytest.raises(ConfigError, match=f"{PASSWORD_ENV}: the password must be one line"):
        await load_campaign(make_campaign(), env={PASSWORD_ENV: "a\nb"})


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("10/s", 10.0),
        ("600/minute", 10.0),
        ("600/minutes", 10.0),
        ("3600 / hour", 1.0),
        ("86400/day", 1.0),
    ],
)
async def test_rate_forms(make_campaign: CampaignFactory, rate: object, per_second: float) -> None:
    campaign = await load_campaign(make_campaign(rate=rate), env={})
    assert campaign.rate == pytest.approx(per_second)


async def test_list_keys_and_defaults(make_campaign: CampaignFactory, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.com\n")
    path = make_campaign(to=None, cc=None, recipients_file="list.csv")
    campaign = await load_campaign(path, env={})
    assert campaign.recipients_file == tmp_path / "list.csv"
    assert (campaign.group_size, campaign.recipients_column, campaign.name_column) == (
        100,
        "email",
        "name",
    )
    assert campaign.server.pipelining is True
    assert campaign.server.max_messages_per_connection == 0
    assert campaign.rate is None and campaign.connections == campaign.concurrency == 4
    capped = await load_campaign(make_campaign(concurrency=8, max_connections=3), env={})
    assert capped.connections == 3
    assert campaign.journal_sync is JournalSync.FULL
    relaxed = await load_campaign(make_campaign(journal_sync="Normal"), env={})
    assert relaxed.journal_sync is JournalSync.NORMAL


async def test_a_yaml_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for name, prev in zip("bcdefghi", "abcdefgh", strict=True):
        rows.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path.write_text("\n".join([*rows, "concurrency: *i", "subject: hi"]) + "\n")
    with pytest.raises(ConfigError, match=r"aliases .* are not allowed") as caught:
        await asyncio.wait_for(load_campaign(path, env={}), 5)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(("suffix", "text"), [(".json", "[" * 100_000), (".yaml", "[" * 100_000)])
async def test_nesting_too_deep_is_one_line(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"invalid (JSON|YAML)"):
        await load_campaign(path, env={})


async def test_a_password_in_the_environment_that_is_not_utf8_is_one_line(
    make_campaign: CampaignFactory,
) -> None:
    path = make_campaign()
    with pytest.raises(ConfigError, match="ASYNCMAILER_PASSWORD is not valid UTF-8"):
        await load_campaign(path, env={"ASYNCMAILER_PASSWORD": "pass\udcffword"})


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ({"recipients_encoding": "utf-9"}, "'utf-9' is not a text encoding Python knows"),
        ({"recipients_encoding": "base64"}, "'base64' is not a text encoding Python knows"),
        ({"recipients_encoding": 1251}, "expected a string, got a number"),
        ({"recipients_delimiter": ";;"}, 'expected one character (",", ";", "|") or "tab"'),
        ({"recipients_delimiter": '"'}, "got '\"'"),
        ({"recipients_delimiter": "\n"}, "expected one character"),
        ({"recipients_delimiter": "a"}, "expected one character"),
        (
            {"recipients_delimiter": ";", "recipients_file": "list.txt"},
            "goes with a .csv recipients_file",
        ),
    ],
)
async def test_list_encoding_and_delimiter_are_checked_at_load(
    make_campaign: CampaignFactory, tmp_path: Path, keys: dict[str, object], reason: str
) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.com\n")
    (tmp_path / "list.txt").write_text("a@example.com\n")
    path = make_campaign(to=None, cc=None, **{"recipients_file": "list.csv", **keys})
    with pytest.raises(ConfigError) as caught:
        await load_campaign(path, env={})
    [key] = [k for k in keys if k != "recipients_file"]
    assert caught.value.field == key
    assert str(caught.value).startswith(f"{path}:{line_of(path, chr(34) + key + chr(34))}: {key}: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("encoding", "codec"),
    [
        ("cp1251", "cp1251"),
        ("Windows-1251", "cp1251"),
        ("latin-1", "iso8859-1"),
        ("UTF-16", "utf-16"),
    ],
)
@pytest.mark.parametrize(
    ("written", "delimiter"), [(";", ";"), ("tab", "\t"), ("\\t", "\t"), ("\t", "\t")]
)
async def test_list_encoding_and_delimiter_keys(
    make_campaign: CampaignFactory,
    tmp_path: Path,
    encoding: str,
    codec: str,
    written: str,
    delimiter: str,
) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.com\n")
    keys = {"recipients_encoding": encoding, "recipients_delimiter": written}
    path = make_campaign(to=None, cc=None, recipients_file="list.csv", suffix=".yaml", **keys)
    campaign = await load_campaign(path, env={})
    assert (campaign.recipients_encoding, campaign.recipients_delimiter) == (codec, delimiter)
    default = await load_campaign(
        make_campaign(to=None, cc=None, recipients_file="list.csv"), env={}
    )
    assert (default.recipients_encoding, default.recipients_delimiter) == ("utf-8", None)


# --- dkim: the key is read and checked when the campaign is loaded -------------------------


def _dkim(key_file: str = "reliances/dkim.pem") -> dict[str, str]:
    return {"domain": "example.com", "selector": "s2026", "key_file": key_file}


@pytest.mark.parametrize("kind", ["rsa-2048", "ed25519"])
async def test_dkim_reads_the_key_and_never_shows_it(
    make_campaign: CampaignFactory, tmp_path: Path, kind: Kind
) -> None:
    (tmp_path / "reliances").mkdir()
    key_file = write_key(tmp_path / "reliances", kind)
    campaign = await load_campaign(make_campaign(dkim=_dkim()), env={})
    settings = campaign.dkim
    assert isinstance(settings, DkimSettings)
    assert (settings.domain, settings.selector, settings.key_file) == (
        "example.com",
        "s2026",
        key_file,
    )
    assert settings.dns_name == "s2026._domainkey.example.com"
    assert settings.key.public_record().encode() == record(kind)
    assert not any("dkim" in n for n in campaign.notices)  # chmod 600, 2048 bits or Ed25519
    shown = repr(campaign) + str(settings) + repr(settings.signer)
    assert "DkimKey" in shown and key_text(kind)[:32] not in shown


async def test_dkim_relay_signs_nothing_here(make_campaign: CampaignFactory) -> None:
    campaign = await load_campaign(make_campaign(dkim="relay"), env={})
    assert campaign.dkim == DKIM_BY_RELAY


async def test_a_dkim_key_others_can_read_or_of_1024_bits_is_a_warning(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    (tmp_path / "reliances").mkdir()
    key_file = write_key(tmp_path / "reliances", "rsa-1024")
    key_file.chmod(0o644)
    campaign = await load_campaign(make_campaign(dkim=_dkim()), env={})
    assert isinstance(campaign.dkim, DkimSettings) and campaign.dkim.key.bits == 1024
    assert any(f"{key_file} is readable by other users" in n for n in campaign.notices)
    assert any(
        f"{key_file} is an RSA key of 1024 bits; Gmail, Yahoo and Microsoft expect 2048" in n
        for n in campaign.notices
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "not a PEM private key"),
        (b"\x30\x82\x04\xa3\x02\x01\x00\xff\xfe", "not a PEM private key"),
        (None, "damaged"),  # a real key, cut short
    ],
)
async def test_a_dkim_key_that_cannot_sign_is_one_line_naming_config_key_and_file(
    make_campaign: CampaignFactory, tmp_path: Path, content: bytes | None, says: str
) -> None:
    (tmp_path / "reliances").mkdir()
    key_file = tmp_path / "reliances" / "dkim.pem"
    key_file.write_bytes(content if content is not None else pem("rsa-2048")[:700])
    key_file.chmod(0o600)
    path = make_campaign(suffix=".yaml", dkim=_dkim())
    with pytest.raises(ConfigError) as caught:
        await load_campaign(path, env={})
    text = str(caught.value)
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("dkim"))
    assert text.startswith(f"{path}:{line}: dkim: key_file {key_file}: ")
    assert says in text and "\n" not in text
    assert key_text("rsa-2048")[100:140] not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_dkim_key_file_must_be_there(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    path = make_campaign(dkim=_dkim("reliances/none.pem"))
    with pytest.raises(ConfigError, match=r"dkim: file not found: .*none\.pem"):
        await load_campaign(path, env={})


async def test_auth_keys(make_campaign: CampaignFactory, tmp_path: Path) -> None:
    campaign = await load_campaign(make_campaign(auth="plain"), env={})
    assert campaign.server.auth is AuthMethod.PLAIN and campaign.server.password is not None
    path = make_campaign(auth="xoauth2", token_command="bin/get-token --account 'me too'")
    server = (await load_campaign(path, env={PASSWORD_ENV: "not used"})).server
    assert server.auth is AuthMethod.XOAUTH2
    assert server.token_command == (str(tmp_path / "bin/get-token"), "--account", "me too")
    # The token logs in: no password at all, not even the default file's or the env's.
    assert server.password is None and server.username == "sender@example.com"
    assert server.logs_in
    (tmp_path / "token.txt").write_text("ya29.x\n")
    path = make_campaign(auth="XOAuth2", token_file="token.txt", token_command=None)
    server = (await load_campaign(path, env={})).server
    assert server.token_file == tmp_path / "token.txt" and server.token_command is None
    default = (await load_campaign(make_campaign(), env={})).server
    assert default.auth is AuthMethod.LOGIN and default.token_file is None


SERVERS_YAML = """\
from: sender@example.com
subject: relays
file_with_message: msg.txt
to: alice@example.com
rate: 100
servers:
  - name: gmail
    host: smtp.gmail.com
    port: 587
    username: me@gmail.com
    password_file: gmail.txt
    concurrency: 3
    max_connections: 2
    rate: 600/minute
    daily_quota: 2000
    max_messages_per_connection: 100
    domains: [gmail.com, GoogleMail.com]
    fallback: [isp]
  - host: 127.0.0.1
    port: 2525
    security: none
    weight: 3
  - name: isp
    host: mail.example.net
    security: ssl
    weight: 1
"""


async def test_servers_each_read_as_a_server_with_its_own_limits(tmp_path: Path) -> None:
    (tmp_path / "msg.txt").write_text("Hello\n")
    (tmp_path / "gmail.txt").write_text(f"{PASSWORD}\n")
    (tmp_path / "gmail.txt").chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(SERVERS_YAML)
    campaign = await load_campaign(path, env={PASSWORD_ENV: "not for servers"})
    gmail, local, isp = campaign.relays
    assert campaign.server is gmail.server and campaign.rate == 100  # the campaign's own
    assert (gmail.name, gmail.server.port, gmail.server.security) == (
        "gmail",
        587,
        Security.STARTTLS,
    )
    assert gmail.server.username == "me@gmail.com" and gmail.server.password == Secret(PASSWORD)
    assert (gmail.concurrency, gmail.connections, gmail.rate, gmail.daily_quota) == (3, 2, 10, 2000)
    assert gmail.server.max_messages_per_connection == 100
    assert gmail.domains == ("gmail.com", "googlemail.com") and gmail.fallback == ("isp",)
    assert local.name == "127.0.0.1:2525" and local.weight == 3  # named host:port by default
    assert local.server.password is None  # no password_file: no login (no legacy default)
    assert (isp.server.port, isp.weight, isp.rate) == (465, 1, None)
    assert campaign.connections == 2 + 4 + 4  # every relay's


async def test_without_servers_the_single_server_keys_are_the_one_relay(
    make_campaign: CampaignFactory,
) -> None:
    campaign = await load_campaign(make_campaign(concurrency=3, max_connections=2), env={})
    (relay,) = campaign.relays
    assert relay.server is campaign.server and relay.name == campaign.server.address
    assert (relay.connections, relay.rate, relay.daily_quota) == (2, None, 0)
    assert campaign.connections == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port: 2525", "port: 99999"), r"c\.yaml:20: servers\[1\]\.port: expected a whole"),
        (("    weight: 3", "    wieght: 3"), r"c\.yaml:22: servers\[1\]\.wieght: unknown key"),
        (("fallback: [isp]", "fallback: [nope]"), r":18: servers\[0\]\.fallback: 'nope' names"),
        (("- name: isp", "- name: gmail"), r":23: servers\[2\]\.name: another server is"),
        (("GoogleMail.com]", "GoogleMail.com, gmail.com]"), r":17: servers\[0\]\.domains: "),
        (("  - host: 127.0.0.1\n", "  - port: 1\n"), r":19: servers\[1\].host: required"),
        (("rate: 100\n", "rate: 100\nhost: x.example\n"), r":6: host: goes in each entry"),
        (("rate: 100\n", "rate: 100\nconcurrency: 2\n"), r":6: concurrency: goes in each"),
    ],
)
async def test_a_bad_server_entry_names_its_line_and_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    (tmp_path / "msg.txt").write_text("Hello\n")
    (tmp_path / "gmail.txt").write_text(f"{PASSWORD}\n")
    (tmp_path / "gmail.txt").chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(SERVERS_YAML.replace(*change))
    with pytest.raises(ConfigError, match=expected) as caught:
        await load_campaign(path, env={})
    assert "\n" not in str(caught.value) and PASSWORD not in str(caught.value)
