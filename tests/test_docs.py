"""README.md is the front door and docs/*.md the topic pages: every relative link between them resolves, to a file
that exists and, with a #fragment, to a heading of the linked page (as GitHub makes anchors from headings)."""
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    slugs = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        slugs.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return slugs


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not checked offline
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and (linked.suffix != ".md" or fragment not in anchors(linked)):
            broken.append(f"{target} (no heading #{fragment} in {linked.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"broken links in {page.relative_to(ROOT)}: {broken_links(page)}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall((ROOT / "README.md").read_text())}
    assert not [page.name for page in PAGES[1:] if page.resolve() not in linked]


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Two words\n\n## Two words\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#two-words) [ok](b.md#two-words-1) [x](missing.md) [y](b.md#three)\n"
                    "```\n[in code](nowhere.md)\n```\n[web](https://example.org/x#y)\n")
    assert broken_links(page) == ["missing.md (no such file)", "b.md#three (no heading #three in b.md)"]


def test_the_readme_stays_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) < 300
