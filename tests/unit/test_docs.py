"""The README fits on a screen and links to the documentation; every relative link of README.md, docs/ and
k8s/README.md resolves (a moved section leaves no dangling link), headings named in an anchor exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "k8s" / "README.md"]
#: Pages other work writes: linked before they exist, checked once they do.
PENDING = {"docs/fuzzing.md", "docs/operations-graceful.md", "docs/operations-cluster.md"}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_fits_on_a_screen_and_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "make run" in readme and "make test" in readme
    for page in ("method", "deploy", "operations", "configuration", "benchmarks", "results", "testing"):
        assert f"](docs/{page}.md)" in readme, page


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        name = str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)
        if name in PENDING and not resolved.exists():
            continue
        assert resolved.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)}
            assert anchor in headings, f"{page.relative_to(REPO)} links to {target}: no such heading"
