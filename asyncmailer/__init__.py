"""asyncmailer: send one message, with attachments, to many recipients over SMTP, fast, exactly
once, with an answer for every recipient."""

from .attachments import Attachment
from .config import (
    AuthMethod,
    Campaign,
    JournalSync,
    Secret,
    Security,
    ServerSettings,
    load_campaign,
)
from .errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DeliveryError,
    InputError,
    JournalError,
    MailerError,
    MissingExtraError,
    NothingToSendError,
    RefusedError,
    TLSRequiredError,
)
from .journal import Journal
from .journal.suppressions import SuppressionStore, campaign_suppression
from .ledger import JournalState, Ledger
from .message import MessageTemplate
from .observer import Observer
from .results import CampaignReport, RecipientResult, Status
from .run.campaign import RunOptions, run_campaign
from .smtp.pool import SessionPool
from .smtp.session import Session
from .suppression import Suppression
from .transport import Connection, Transport

__version__ = "0.1.0"

__all__ = [
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
    "MessageTemplate",
    "MissingExtraError",
    "NothingToSendError",
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
