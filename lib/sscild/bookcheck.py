"""Check a built book in a real browser: every page of the table of contents renders without error.

Used by the browser test (``tests/test_book_browser.py``) and runnable by hand::

    python -m sscild.bookcheck book/_build/html --screenshots results/browser

For each page listed in ``_toc.yml`` it loads the page in headless Chromium (Debian's ``chromium`` +
``chromedriver``, driven by Selenium) from a local HTTP server and reports:

* a Python traceback or an error/stderr output cell on the page,
* an image that did not load (``naturalWidth == 0``),
* a link to a page or anchor of the book that does not exist (broken cross-reference),
* any request to a host other than the local server (the book must work offline).

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

__all__ = ["toc_pages", "chromium_available", "check_site", "main"]

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
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
return {errs: errs, links: links, ids: ids, title: document.title};
"""


def check_site(html_dir: str | Path, pages: list[str] | None = None, *, screenshots: str | Path | None = None,
               toc: str | Path | None = None) -> dict[str, list[str]]:
    """Visit ``pages`` (document names) of the built site; return {page: [problems]} (empty lists = fine)."""
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
                info = driver.execute_script(_PAGE_JS)
                errs += info["errs"]
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
    ap = argparse.ArgumentParser(prog="python -m sscild.bookcheck")
    ap.add_argument("html", type=Path)
    ap.add_argument("--toc", type=Path, default=None)
    ap.add_argument("--screenshots", type=Path, default=None)
    args = ap.parse_args(argv)
    result = check_site(args.html, toc=args.toc, screenshots=args.screenshots)
    bad = {k: v for k, v in result.items() if v}
    for page, errs in result.items():
        print(f"{'FAIL' if errs else 'ok  '} {page}")
        for e in errs:
            print(f"     - {e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
