"""README and docs: every docs page is reachable from the README, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text(encoding="utf-8")) if "://" not in target]


def test_readme_links_every_docs_page():
    linked = {(ROOT / target).resolve() for target in _links(ROOT / "README.md")}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_relative_links_resolve():
    broken = [(str(page.relative_to(ROOT)), target) for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
              for target in _links(page) if not (page.parent / target).exists()]
    assert not broken, broken
