"""Open an HTML page in headless Chromium (Debian's `chromium`; .ci/run installs it) and check what it shows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# What makes a browser fetch something: an absolute or protocol-relative URL in an attribute or in CSS.
EXTERNAL = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//|url\(\s*["']?"""
                      r"""\s*(?:[a-z][a-z0-9+.-]*:)?//|@import|<link\b|<script\b[^>]*\bsrc""", re.IGNORECASE)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND")  # no name resolves: nothing can be fetched


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")


def external_urls(text: str) -> list[str]:
    return [text[max(0, m.start() - 20):m.end() + 40] for m in EXTERNAL.finditer(text)]


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 1600, net_log: Path | None = None) -> Path:
    """A PNG of `page` as headless Chromium renders it as HTML, with a fresh profile and no network. With
    `net_log`, Chromium also writes its network log there (read by `page_requests`).

    A KFP HTML artifact is a file without an extension (`.../report`), which the UI serves as text/html; a
    file:// URL gets its type from the extension (of the file a link points to, too), so such a page is opened
    from a `.html` copy."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as work:
        target = page.resolve()
        if target.suffix != ".html":
            target = Path(shutil.copyfile(target, Path(work) / f"{page.name}.html"))
        log = [f"--log-net-log={net_log}"] if net_log else []
        proc = subprocess.run([chromium(), *FLAGS, *log, f"--user-data-dir={work}/profile",
                               f"--window-size={width},{height}", f"--screenshot={png}", target.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    return png


def page_requests(net_log: Path) -> list[str]:
    """The network requests (http, https, ws, ...) the page itself started, from Chromium's network log: every
    URL_REQUEST_START_JOB whose initiator is an origin. The browser's own background requests (update checks,
    which FLAGS mostly turn off) have the initiator "not an origin" and are left out; file:// loads never reach
    the network stack. Complements `external_urls`, which reads the markup: this sees what scripts fetch too."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and e.get("params", {}).get("initiator") not in (None, "not an origin")]


def colours(png: Path) -> tuple[int, int]:
    """(distinct colours, pixels with a hue) of a screenshot: a blank page is (1, 0); source text shown as plain
    text is all grey (no hue); the pages' plots and PASS/FAIL marks are coloured."""
    from PIL import Image

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        found = rgb.getcolors(maxcolors=1 << 24) or []
    coloured = sum(count for count, (r, g, b) in found if max(r, g, b) - min(r, g, b) > 40)
    return len(found), coloured


def assert_renders(page: Path, png: Path) -> None:
    """The page names no external URL and renders in a real browser as a page with colour, not a blank or its
    source text."""
    text = page.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<!DOCTYPE html>")
    assert external_urls(text) == []
    distinct, coloured = colours(screenshot(page, png))
    assert distinct > 20 and coloured > 200, (distinct, coloured)
