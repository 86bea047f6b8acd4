"""The README and docs/ link to each other by file and heading: every such link must lead
somewhere (a page or a section moved between them breaks links silently otherwise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")  # `![logo](images/logo.png)` shows a link, is none


def anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))  # a "# comment" is no heading
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(text):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[Path, str]]:
    """(target file, anchor or "") of every relative link on the page."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    found = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        found.append(((page.parent / path).resolve() if path else page, fragment))
    return found


def test_the_anchor_rule_matches_githubs() -> None:
    assert anchor("A dry run: `--dry-run DIR`") == "a-dry-run---dry-run-dir"
    assert anchor("Several relays: `servers`") == "several-relays-servers"
    assert anchor("A newsletter, as bulk senders must send it") == (
        "a-newsletter-as-bulk-senders-must-send-it"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target, fragment in links(page):
        if not target.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not target.exists():
            broken.append(f"{target.relative_to(ROOT)} (no such file)")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{target.relative_to(ROOT)}#{fragment} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: " + ", ".join(broken)
