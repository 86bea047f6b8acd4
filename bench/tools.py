"""External tools: Postfix's smtp-sink and smtp-source, GNU time for the senders' peak RSS, and
stunnel for the implicit-TLS rows.

When one is missing and we are root, the Debian packages are installed (Postfix with "No
configuration", so no mail system is set up, and its daemon is checked to be stopped; stunnel4
without any configuration of its own: the harness runs it with config files of its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SBIN = Path("/usr/sbin")
GNU_TIME = Path("/usr/bin/time")
POSTFIX_HINT = (
    "as root: echo 'postfix postfix/main_mailer_type select No configuration'"
    " | debconf-set-selections && apt-get update && DEBIAN_FRONTEND=noninteractive"
    " apt-get install -y --no-install-recommends postfix"
)
STUNNEL_HINT = "as root: apt-get update && apt-get install -y --no-install-recommends stunnel4"
_APT_TIMEOUT = 300.0
_DEBCONF = "postfix postfix/main_mailer_type select No configuration\n"


@dataclass(frozen=True, slots=True)
class Tools:
    """Paths to the tools (None: missing) and why any is missing."""

    sink: Path | None
    source: Path | None
    gnu_time: Path | None
    stunnel: Path | None
    problems: tuple[str, ...] = ()

    @property
    def postfix(self) -> bool:
        return self.sink is not None and self.source is not None


def _find(name: str) -> Path | None:
    found = shutil.which(name) or (str(SBIN / name) if (SBIN / name).is_file() else None)
    return Path(found) if found else None


def _gnu_time() -> Path | None:
    """/usr/bin/time if it is GNU time (it reports the child's own peak RSS with %M)."""
    try:
        done = subprocess.run(
            [str(GNU_TIME), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return GNU_TIME if "GNU" in done.stdout + done.stderr else None


def find_tools() -> Tools:
    stunnel = _find("stunnel4") or _find("stunnel")
    return Tools(_find("smtp-sink"), _find("smtp-source"), _gnu_time(), stunnel)


def _run(argv: list[str], *, stdin: str | None = None) -> str | None:
    """Run a setup command; return None on success, else a one-line reason."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=_APT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{' '.join(argv)}: {err}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{' '.join(argv[:3])}... exited {done.returncode}: {last}"
    return None


def stop_postfix_daemon() -> str:
    """Make sure the Postfix mail system is not running; return what was found or done."""
    postfix = _find("postfix")
    if postfix is None:
        return "postfix daemon: not installed"
    status = _run([str(postfix), "status"])
    if status is not None:
        return "postfix daemon: not running"
    stopped = _run([str(postfix), "stop"])
    return f"postfix daemon: was running; postfix stop: {stopped or 'done'}"


def _install(packages: list[str], log: list[str]) -> str | None:
    log.append(f"installing Debian packages: {' '.join(packages)}")
    steps: list[tuple[list[str], str | None]] = [
        (["debconf-set-selections"], _DEBCONF),
        (["apt-get", "update"], None),
    ]
    for argv, stdin in steps:
        if problem := _run(argv, stdin=stdin):
            return problem
    install = ["apt-get", "install", "-y", "--no-install-recommends"]
    problem = _run([*install, *packages])
    if problem and len(packages) > 1:  # one package that can't be had keeps out the others
        failed = [package for package in packages if _run([*install, package])]
        problem = f"{problem} (alone: {', '.join(failed)} failed)" if failed else None
    if "postfix" in packages:
        log.append(stop_postfix_daemon())
    return problem


def ensure_tools(log: list[str]) -> Tools:
    """Find the tools, installing the missing packages first if we are root."""
    tools = find_tools()
    wanted = (
        ("postfix", tools.postfix),
        ("time", tools.gnu_time is not None),
        ("stunnel4", tools.stunnel is not None),
    )
    missing = [package for package, found in wanted if not found]
    problem = None
    if missing and os.geteuid() == 0:
        problem = _install(missing, log)
        tools = find_tools()
    problems = []
    why = f"install failed: {problem}; " if problem else ""
    if not tools.postfix:
        problems.append(f"smtp-sink/smtp-source not found; {why}install them {POSTFIX_HINT}")
    if tools.stunnel is None:
        problems.append(f"stunnel not found; {why}install it {STUNNEL_HINT}")
    if tools.gnu_time is None:
        problems.append(
            "GNU time not found (apt-get install time): peak RSS comes from os.wait4, which "
            "counts the harness's own RSS at fork time as a floor"
        )
    return Tools(tools.sink, tools.source, tools.gnu_time, tools.stunnel, tuple(problems))
