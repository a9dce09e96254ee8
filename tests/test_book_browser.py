"""The built book in headless Chromium: every page of the TOC loads with no error output, no broken
image, no broken link and no request to a remote host; plus a test that the checker catches each."""

from __future__ import annotations

import shutil

import pytest

from sscild.bookcheck import check_site, chromium_available, toc_pages

ok, why = chromium_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not ok, reason=why)]


def test_every_toc_page_renders_cleanly(smoke_run):
    shots = smoke_run["results"] / "browser"
    pages = toc_pages(smoke_run["book"] / "_toc.yml")
    result = check_site(smoke_run["html"], pages, screenshots=shots)
    assert set(result) == set(pages)
    bad = {p: e for p, e in result.items() if e}
    assert not bad, bad
    for p in pages:
        assert (shots / f"{p.replace('/', '__')}.png").stat().st_size > 1000


def test_checker_flags_error_output_broken_image_and_link(smoke_run, tmp_path):
    site = tmp_path / "html"
    shutil.copytree(smoke_run["html"], site)
    page = site / "discussion.html"
    html = page.read_text()
    planted = ('<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb notranslate">'
               '<pre>Traceback (most recent call last):\nValueError: planted</pre></div></div>'
               '<img src="_static/does-not-exist.png" alt="x">'
               '<a href="chapters/no-such-page.html">broken</a>')
    page.write_text(html.replace("</main>", planted + "</main>", 1) if "</main>" in html else html + planted)
    result = check_site(site, ["discussion", "references"])
    errs = " | ".join(result["discussion"])
    assert "error output" in errs or "traceback" in errs.lower()
    assert "image did not load" in errs
    assert "broken link" in errs
    assert result["references"] == []
