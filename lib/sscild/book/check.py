"""Check a built book in a real browser: every page of the table of contents renders without error.

Used by the browser test (``tests/test_book_browser.py``) and runnable by hand::

    python -m sscild.book.check book/_build/html --screenshots results/browser

For each page listed in ``_toc.yml`` it loads the page in headless Chromium (Debian's ``chromium`` +
``chromedriver``, driven by Selenium) from a local HTTP server and reports:

* a Python traceback or an error/stderr output cell on the page,
* an image that did not load (``naturalWidth == 0``),
* a link to a page or anchor of the book that does not exist (broken cross-reference),
* any request to a host other than the local server (the book must work offline),
* a table cell shortened to "..." (pandas' display truncation) or a table row of dots,
* a table header that is a code name (``lung_dice``) rather than words,
* the same image shown twice on one page,
* an image in the page's text that is not a numbered figure with a caption,
* a parameters cell (the chapter's defaults or papermill's injected values) left on the page,
* any text the caller forbids (e.g. "Not run in this build" once the appendix was executed).

It saves a screenshot of every page.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import yaml

__all__ = ["toc_pages", "chromium_available", "check_site", "repeated_images", "main"]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1280,1400"]


def toc_pages(toc_file: Path) -> list[str]:
    """Document names (without suffix) listed in a Jupyter Book ``_toc.yml``, root first."""
    toc = yaml.safe_load(Path(toc_file).read_text())
    pages = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                pages.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [p.rsplit(".", 1)[0] if p.endswith((".md", ".ipynb")) else p for p in pages]


def chromium_available() -> tuple[bool, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        return False, "Chromium or chromedriver not installed (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False, "selenium is not installed"
    return True, chrome


@contextlib.contextmanager
def _serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - keep test output clean
        pass


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ok, chrome = chromium_available()
    if not ok:
        raise RuntimeError(chrome)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    profile_dir = tempfile.mkdtemp(prefix="sscild-chrome-")
    for f in CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts), profile_dir


_PAGE_JS = r"""
const errs = [];
document.querySelectorAll('.cell_output .traceback, .output.traceback, .cell_output .stderr, .output.stderr, .output.error')
  .forEach(e => errs.push('error output: ' + e.innerText.slice(0, 200)));
if (document.body.innerText.includes('Traceback (most recent call last)')) errs.push('Python traceback in page text');
document.querySelectorAll('img').forEach(i => { if (!i.complete || i.naturalWidth === 0) errs.push('image did not load: ' + i.getAttribute('src')); });
document.querySelectorAll('td, th').forEach(c => { const t = c.textContent.trim();
  if (t === '...' || t === '\u2026' || t.endsWith('...') || t.endsWith('\u2026')) errs.push('truncated table cell: ' + t.slice(-60)); });
document.querySelectorAll('table thead th').forEach(th => { const t = th.textContent.trim();
  if (/^[a-z][a-z0-9]*(_[a-z0-9]+)+$/.test(t)) errs.push('table header that is a code name: ' + t); });
const article = document.querySelector('article') || document.querySelector('main') || document.body;
const imgs = [];
article.querySelectorAll('img').forEach(i => {
  const src = i.getAttribute('src') || '';
  imgs.push(i.src);
  const fig = i.closest('figure');
  const num = fig && fig.querySelector('figcaption .caption-number');
  const text = fig && fig.querySelector('figcaption') ? fig.querySelector('figcaption').textContent.replace(/Fig\.\s*[\d.]+/, '').trim() : '';
  if (!num || !/\d/.test(num.textContent) || text.length < 10) errs.push('figure without a number and caption: ' + src);
});
document.querySelectorAll('.tag_parameters, .tag_injected-parameters').forEach(c =>
  errs.push('parameters cell on the page: ' + c.textContent.trim().slice(0, 80)));
const forbid = arguments[0] || [];
forbid.forEach(f => { if (document.body.innerText.includes(f)) errs.push('forbidden text on the page: ' + f); });
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
return {errs: errs, links: links, ids: ids, imgs: imgs, title: document.title};
"""


def _local_file(html_dir: Path, url: str, host: str) -> Path | None:
    u = urlparse(url)
    if u.scheme in ("http", "https") and u.netloc == host:
        return html_dir / u.path.lstrip("/")
    return None


def _thumbnail(path: Path, size: int = 48):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        return w / h, np.asarray(im.convert("L").resize((size, size), Image.Resampling.BOX), dtype=float)


def repeated_images(files: list[Path | None], *, tolerance: float = 3.5) -> list[str]:
    """Problems for images shown more than once: the same file, the same bytes, or the same picture
    at another resolution (aspect ratio within 2 % and 48 x 48 grey thumbnails differing by less
    than ``tolerance`` grey levels on average: a figure displayed once from memory and once from
    its saved PNG).

    Example:
        >>> repeated_images([])
        []
    """
    import hashlib

    import numpy as np

    errs, seen = [], []
    for f in files:
        if f is None or not f.is_file():
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        try:
            aspect, thumb = _thumbnail(f)
        except Exception:  # not a raster image (e.g. SVG): bytes only
            aspect, thumb = None, None
        for g, d, a, t in seen:
            same = d == digest or (thumb is not None and t is not None and abs(aspect / a - 1) < 0.02
                                   and float(np.abs(thumb - t).mean()) < tolerance)
            if same:
                errs.append(f"image shown twice: {f.name} repeats {g.name}")
                break
        seen.append((f, digest, aspect, thumb))
    return errs


def check_site(html_dir: str | Path, pages: list[str] | None = None, *, screenshots: str | Path | None = None,
               toc: str | Path | None = None, forbid: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Visit ``pages`` (document names) of the built site; return {page: [problems]} (empty lists = fine).

    Args:
        html_dir: the built HTML folder.
        pages: document names; ``None``: every page of ``toc``.
        screenshots: folder for one PNG per page.
        toc: the book's ``_toc.yml`` (default: two folders above ``html_dir``).
        forbid: phrases that must not appear on any page (e.g. ``"Not run in this build"``).
    """
    if isinstance(forbid, str) or not all(isinstance(f, str) and f for f in forbid):
        raise ValueError(f"forbid must be a list of non-empty phrases, got {forbid!r}")
    html_dir = Path(html_dir).resolve()
    if pages is None:
        pages = toc_pages(Path(toc) if toc else html_dir.parent.parent / "_toc.yml")
    if screenshots is not None:
        Path(screenshots).mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    driver, profile_dir = _driver()
    try:
        with _serve(html_dir) as base:
            host = urlparse(base).netloc
            for page in pages:
                errs = []
                path = html_dir / f"{page}.html"
                if not path.exists():
                    problems[page] = [f"page missing from the build: {path}"]
                    continue
                driver.get(urljoin(base, f"{page}.html"))
                info = driver.execute_script(_PAGE_JS, list(forbid))
                errs += info["errs"]
                errs += repeated_images([_local_file(html_dir, u, host) for u in info["imgs"]])
                for link in info["links"]:
                    url, frag = urldefrag(link)
                    u = urlparse(url)
                    if u.scheme not in ("http", "https") or u.netloc != host:
                        continue
                    target = html_dir / u.path.lstrip("/")
                    if target.is_dir():
                        target = target / "index.html"
                    if not target.exists():
                        errs.append(f"broken link: {link}")
                    elif frag and target == path and frag not in info["ids"]:
                        errs.append(f"broken anchor: #{frag}")
                for entry in driver.get_log("performance"):
                    msg = entry.get("message", "")
                    if '"Network.requestWillBeSent"' in msg:
                        import json

                        req = json.loads(msg)["message"]["params"]["request"]["url"]
                        rh = urlparse(req)
                        if rh.scheme in ("http", "https") and rh.netloc != host:
                            errs.append(f"request to a remote host: {req}")
                if screenshots is not None:
                    driver.save_screenshot(str(Path(screenshots) / f"{page.replace('/', '__')}.png"))
                problems[page] = errs
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.book.check")
    ap.add_argument("html", type=Path)
    ap.add_argument("--toc", type=Path, default=None)
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument("--forbid", action="append", default=[], help="phrase no page may contain (repeatable)")
    args = ap.parse_args(argv)
    result = check_site(args.html, toc=args.toc, screenshots=args.screenshots, forbid=args.forbid)
    bad = {k: v for k, v in result.items() if v}
    for page, errs in result.items():
        print(f"{'FAIL' if errs else 'ok  '} {page}")
        for e in errs:
            print(f"     - {e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
