"""The built documentation site works opened as files (README: open site/index.html): every link and
resource of every page resolves to a file of the site (no directory URLs, which file:// cannot serve),
every #fragment to an id of its page, and nothing is loaded from the network (code is highlighted at
build time, not by highlight.js from a CDN)."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import ROOT

EXTERNAL = ("http:", "https:", "mailto:", "javascript:", "data:")
SERVER_ONLY = {"404.html"}  # shown by a web server for a missing page, with root-relative links


class Page(HTMLParser):
    """The links (a href), resources (script src, link href, img src) and ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.resources: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag in ("script", "img") and values.get("src"):
            self.resources.append(values["src"] or "")
        elif tag == "link" and values.get("href"):
            self.resources.append(values["href"] or "")


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def broken_links(site: Path) -> list[str]:
    """``page: link`` for every in-site link or resource that a browser on file:// could not open."""
    pages = {path: parse(path) for path in site.rglob("*.html")}
    broken = []
    for path, page in pages.items():
        if path.name in SERVER_ONLY:
            continue
        for link in page.links + page.resources:
            if link.startswith(EXTERNAL):
                continue
            parts = urlsplit(link)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no such id)")
    return broken


def test_every_link_of_the_built_site_opens_over_file_urls(site):
    assert (site / "index.html").is_file()
    broken = broken_links(site)
    assert not broken, "\n".join(broken[:30])


def test_the_link_check_finds_a_directory_url_and_a_missing_anchor(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "index.html").write_text('<p id="here">x</p>')
    (tmp_path / "index.html").write_text('<a href="api/">dir</a><a href="api/index.html#gone">gone</a>'
                                         '<a href="api/index.html#here">ok</a><a href="https://x.org/">web</a>')
    assert broken_links(tmp_path) == ["index.html: api/ (no such file)", "index.html: api/index.html#gone (no such id)"]


def test_nothing_is_loaded_from_the_network(site):
    remote = [f"{path.relative_to(site)}: {resource}" for path in site.rglob("*.html")
              for resource in parse(path).resources if resource.startswith(EXTERNAL)]
    assert not remote, "\n".join(remote[:10])
    assert "highlight.js" not in (site / "index.html").read_text(encoding="utf-8")
    assert 'class="codehilite"' in (site / "api.html").read_text(encoding="utf-8")


def test_no_literal_backslash_in_a_table_cell(site):
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "\\|" not in text, f"{path.relative_to(site)} shows an escaped pipe literally"
