"""The public API is what __all__ says it is."""

from __future__ import annotations

import asyncmailer


def test_exported_members() -> None:
    assert sorted(asyncmailer.__all__) == sorted(
        [
            "Attachment",
            "AuthError",
            "AuthMethod",
            "Campaign",
            "CampaignReport",
            "ConfigError",
            "ConnectError",
            "Connection",
            "DeliveryError",
            "InputError",
            "Journal",
            "JournalError",
            "JournalState",
            "JournalSync",
            "Ledger",
            "MailerError",
            "MissingExtraError",
            "NothingToSendError",
            "MessageTemplate",
            "Observer",
            "RecipientResult",
            "RefusedError",
            "RunOptions",
            "Secret",
            "Security",
            "ServerSettings",
            "Session",
            "SessionPool",
            "Status",
            "Suppression",
            "SuppressionStore",
            "TLSRequiredError",
            "Transport",
            "campaign_suppression",
            "load_campaign",
            "run_campaign",
        ]
    )
    for name in asyncmailer.__all__:
        assert getattr(asyncmailer, name) is not None


def test_error_tree() -> None:
    from asyncmailer import errors

    assert issubclass(errors.ConfigError, errors.InputError)
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ConnectError, ConnectionError)
    assert issubclass(errors.AuthError, PermissionError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.MailerError)
