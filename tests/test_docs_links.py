"""Every relative link of README.md and docs/*.md points to a file that exists and, with a
``#fragment``, to a heading of that file (GitHub's anchors), so moving text between the pages
cannot leave a dead link behind."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_anchor_follows_githubs_rule():
    # hand-derived from headings of these pages as GitHub renders them
    assert anchor("Feeding the GPU: uint8 clips, data-wait warning, `--device_aug`") == (
        "feeding-the-gpu-uint8-clips-data-wait-warning---device_aug"
    )
    assert anchor("On a cluster: SLURM and torchrun") == "on-a-cluster-slurm-and-torchrun"
    assert anchor("Recipe options (all off by default)") == "recipe-options-all-off-by-default"


def test_the_docs_pages_exist_and_readme_links_each():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(PAGES) > 1, "no docs/*.md page"
    unlinked = [p for p in PAGES[1:] if f"({p})" not in readme and f"({p}#" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    path = os.path.join(REPO, page)
    with open(path, encoding="utf-8") as f:
        links = LINK.findall(_prose(f.read()))
    assert links or page != "README.md"
    dead = []
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        file_part, _, fragment = target.partition("#")
        linked = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        if not os.path.exists(linked):
            dead.append(f"{target} (no file {os.path.relpath(linked, REPO)})")
        elif fragment and fragment not in anchors(linked):
            dead.append(f"{target} (no heading with anchor #{fragment})")
    assert not dead, f"{page}: dead links: {dead}"
