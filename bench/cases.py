"""What is measured: one `Case` per row of the table, in the order they run."""

from __future__ import annotations

from dataclasses import dataclass

ORIGINAL = "original (smtplib)"
ASYNCMAILER = "asyncmailer"
SMTP_SOURCE = "smtp-source"
MEMORY = "asyncmailer (memory)"

SIZES = ("2.4KB", "143KB")
CONCURRENCIES = (1, 8, 32)
LATENCIES_MS = (0, 50)
MEMORY_LISTS = (10_000, 1_000_000)
MEMORY_GROUP_SIZE = 100
MEMORY_CONCURRENCY = 32
BIG_SIZE = "100MB"  # one message with one 100 MB attachment: peak RSS, target <= 200 MB
# Implicit TLS (asyncmailer with security: ssl; smtp-source through a stunnel client leg), at
# 0 ms with the 2.4 KB message and the same counts as the plain 0 ms rows.
TLS_SIZE = "2.4KB"
TLS_CONCURRENCIES = (8, 32)
# Personalised campaigns (one recipient per message), 2.4 KB of text, and the same as HTML with
# its text alternative: the CPU per message of the second against the first, at 0 ms, c=32.
PERSONAL_TEXT = "text"
PERSONAL_HTML = "HTML+text"
PERSONAL_CPU_RATIO = 1.5  # target: HTML+text costs at most 1.5x the CPU of text per message

# DKIM signing's cost: asyncmailer at 0 ms, 2.4 KB, c=32, unsigned and signed with each key,
# taking turns in one run (bench/run.py), compared by CPU per message.
DKIM_KINDS = ("unsigned", "rsa-2048", "ed25519")
DKIM_SIZE = "2.4KB"
DKIM_CONCURRENCY = 32

# Adaptive throttling: a relay taking 50 messages/s, a campaign configured for 500/s.
THROTTLE_RATE = 50
THROTTLE_ASK = 10
THROTTLE_MESSAGES = 1_500  # ~30 s at the relay's rate

# The shared PostgreSQL ledger (`asyncmailer worker --processes N`), each row on a private
# server started by the bench (bench/postgres.py): 4 workers against 1 at 50 ms, c=32 each;
# --processes 2 against 1 at 0 ms into smtp-sink (one recipient per message); and the time
# until a 1,000,000-recipient .txt list is all loaded into the ledger.
PG_WORKERS = 4
PG_WORKERS_RATIO = 3.5  # target: 4 workers deliver at least 3.5x one worker
PG_WORKER_MESSAGES = 5_000  # one worker at 50 ms, c=32: ~12 s; 4 workers get 4x as many
PG_PROCESSES = 2
PG_PROCESSES_RATIO = 1.3  # target: --processes 2 at least 1.3x one process on 2 cores
PG_PROCESS_MESSAGES = 20_000  # one process at 0 ms: ~11 s; 2 processes get 2x as many
PG_LOAD_RECIPIENTS = 1_000_000
PG_LOAD_SECONDS = 20.0  # target: loaded in at most 20 s

# Messages per run. At 0 ms: per size; at 50 ms: for concurrency 32, proportionally fewer below.
_COUNT_0MS = {"2.4KB": 10_000, "143KB": 2_000}
_ORIGINAL_0MS = 2_000
_COUNT_50MS_C32 = 2_000
_ORIGINAL_50MS = 20  # ~7 round trips of 50 ms each: about 3 messages/s
_MIN_COUNT = 20


@dataclass(frozen=True, slots=True)
class Case:
    """One measured run."""

    sender: str
    latency_ms: int
    size: str
    concurrency: int
    pipelining: bool | None  # None: the sender has no such switch
    messages: int  # SMTP transactions
    recipients: int
    tls: bool = False  # implicit TLS through stunnel to the sink (see tls.py)
    personal: str = ""  # PERSONAL_TEXT or PERSONAL_HTML: a personalised campaign
    dkim: str | None = None  # one of DKIM_KINDS: a row of the signing comparison
    # A relay that throttles above this many messages/s (421 4.7.0), the campaign asking
    # for THROTTLE_ASK times as many: adaptive throttling's row (0: no throttle).
    throttle: int = 0
    # The PostgreSQL ledger: `asyncmailer worker --processes N` (0: `send` on the SQLite
    # journal); `until_loaded` measures only until the list is all in the ledger.
    processes: int = 0
    until_loaded: bool = False

    @property
    def label(self) -> str:
        """The sender as the table names it; over TLS, with how it gets there; personalised,
        with which message; signed or not in the DKIM rows."""
        if self.personal:
            return f"{self.sender} (personalised {self.personal})"
        if self.until_loaded:
            return f"{self.sender} PostgreSQL load"
        if self.processes:
            return f"{self.sender} PostgreSQL x{self.processes}"
        if self.dkim is not None:
            return f"{self.sender}, DKIM {self.dkim}"
        if not self.tls:
            return self.sender
        how = "via stunnel" if self.sender == SMTP_SOURCE else "(ssl)"
        return f"{self.sender} {how}"

    @property
    def group_size(self) -> int:
        return self.recipients // self.messages

    @property
    def timeout(self) -> float:
        """Seconds before the run is killed."""
        if self.until_loaded:
            return 120.0
        return 420.0 if self.recipients >= 1_000_000 else 180.0


def _scaled(count: int, scale: float) -> int:
    return max(_MIN_COUNT, round(count * scale))


def _count(latency_ms: int, size: str, concurrency: int, scale: float) -> int:
    if latency_ms == 0:
        return _scaled(_COUNT_0MS[size], scale)
    return _scaled(_COUNT_50MS_C32 * concurrency // max(CONCURRENCIES), scale)


def _throughput(latency_ms: int, size: str, scale: float) -> list[Case]:
    original = _ORIGINAL_0MS if latency_ms == 0 else _ORIGINAL_50MS
    n = _scaled(original, scale)
    cases = [Case(ORIGINAL, latency_ms, size, 1, None, n, n)]
    for concurrency in CONCURRENCIES:
        n = _count(latency_ms, size, concurrency, scale)
        cases += [
            Case(ASYNCMAILER, latency_ms, size, concurrency, pipelining, n, n)
            for pipelining in (True, False)
        ]
        cases.append(Case(SMTP_SOURCE, latency_ms, size, concurrency, False, n, n))
    return cases


def _implicit_tls(scale: float) -> list[Case]:
    """asyncmailer over implicit TLS and smtp-source through stunnel, at each concurrency."""
    n = _scaled(_COUNT_0MS[TLS_SIZE], scale)  # as many as the plain 0 ms rows
    return [
        Case(sender, 0, TLS_SIZE, concurrency, pipelining, n, n, tls=True)
        for concurrency in TLS_CONCURRENCIES
        for sender, pipelining in ((ASYNCMAILER, True), (SMTP_SOURCE, False))
    ]


def _personalised(scale: float) -> list[Case]:
    """asyncmailer personalising each message: text, then HTML with text, as many as the
    plain 0 ms 2.4 KB rows."""
    n = _scaled(_COUNT_0MS["2.4KB"], scale)
    return [
        Case(ASYNCMAILER, 0, "2.4KB", 32, True, n, n, personal=kind)
        for kind in (PERSONAL_TEXT, PERSONAL_HTML)
    ]


def _signing(scale: float) -> list[Case]:
    """asyncmailer unsigned, then signing with an RSA-2048 and an Ed25519 key."""
    n = _scaled(_COUNT_0MS[DKIM_SIZE], scale)
    return [
        Case(ASYNCMAILER, 0, DKIM_SIZE, DKIM_CONCURRENCY, True, n, n, dkim=kind)
        for kind in DKIM_KINDS
    ]


def postgresql(scale: float) -> list[Case]:
    """The PostgreSQL ledger's rows, each pair one worker (process) then several."""
    one = _scaled(PG_WORKER_MESSAGES, scale)
    process = _scaled(PG_PROCESS_MESSAGES, scale)
    load = max(1_000, round(PG_LOAD_RECIPIENTS * scale))
    return [
        Case(ASYNCMAILER, 50, "2.4KB", 32, True, one, one, processes=1),
        Case(
            ASYNCMAILER,
            50,
            "2.4KB",
            32,
            True,
            one * PG_WORKERS,
            one * PG_WORKERS,
            processes=PG_WORKERS,
        ),
        Case(ASYNCMAILER, 0, "2.4KB", 32, True, process, process, processes=1),
        Case(
            ASYNCMAILER,
            0,
            "2.4KB",
            32,
            True,
            process * PG_PROCESSES,
            process * PG_PROCESSES,
            processes=PG_PROCESSES,
        ),
        Case(
            ASYNCMAILER,
            0,
            "2.4KB",
            32,
            True,
            load // MEMORY_GROUP_SIZE,
            load,
            processes=1,
            until_loaded=True,
        ),
    ]


def matrix(*, quick: bool, scale: float = 1.0) -> list[Case]:
    """Every run: throughput at each latency and size (the implicit-TLS, personalised and
    DKIM rows after the plain 0 ms rows of their size), then memory with big lists.

    `quick` leaves out the 1,000,000-recipient run; `scale` multiplies the message counts
    (a smoke test of the harness; the ratios need 1.0).
    """
    cases = []
    for latency_ms in LATENCIES_MS:
        for size in SIZES:
            cases += _throughput(latency_ms, size, scale)
            if (latency_ms, size) == (0, TLS_SIZE):
                cases += _implicit_tls(scale)
                n = _scaled(THROTTLE_MESSAGES, scale)
                cases.append(Case(ASYNCMAILER, 0, TLS_SIZE, 8, True, n, n, throttle=THROTTLE_RATE))
            if (latency_ms, size) == (0, "2.4KB"):
                cases += _personalised(scale)
            if (latency_ms, size) == (0, DKIM_SIZE):
                cases += _signing(scale)
    cases += postgresql(scale)
    cases.append(Case(MEMORY, 0, BIG_SIZE, 1, True, 1, 1))
    for count in MEMORY_LISTS:
        if quick and count >= 1_000_000:
            continue
        cases.append(
            Case(
                MEMORY,
                0,
                "2.4KB",
                MEMORY_CONCURRENCY,
                True,
                count // MEMORY_GROUP_SIZE,
                count,
            )
        )
    return cases
