"""Every relative link in README.md and docs/*.md points at a file that exists, and a #fragment at a
heading of that page (as GitHub makes heading anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_INLINE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def links(text: str) -> list[str]:
    text = _COMMENT.sub("", _FENCE.sub("", text))
    text = _CODE.sub("", text)
    return _INLINE.findall(text) + _REFERENCE.findall(text)


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_link_finder() -> None:
    text = ("[a](docs/a.md) ![b](img.png \"t\") [c](https://x.org/y) `[d](no.md)` [e](#here)\n"
            "```\n[f](no.md)\n```\n<!-- [g](no.md) -->\n[h]: ../BENCHMARKS.md\n")
    assert links(text) == ["docs/a.md", "img.png", "https://x.org/y", "#here", "../BENCHMARKS.md"]
    assert anchors("# Deployment: wheel, image\n## The `wheel`\n## How this is tested\n## Usage\n## Usage\n") \
        == {"deployment-wheel-image", "the-wheel", "how-this-is-tested", "usage", "usage-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    text = page.read_text(encoding="utf-8")
    for link in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):  # https:, mailto:, ...
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading #{fragment} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_starts_with_the_two_commands() -> None:
    """A newcomer's first screen: exactly two set-up commands, the first serving, the second the tests."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.match(r"# mailowl\n\n```sh\n(.*?)\n```\n", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["scripts/bootstrap && .venv/bin/mailowl serve", ".ci/run"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/bootstrap --test" in ci and ".venv/bin/pytest" in ci


def test_readme_indexes_every_page() -> None:
    """No page of docs/ is reachable only by chance: the README links each one."""
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in links((ROOT / "README.md").read_text())}
    assert [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked] == []
