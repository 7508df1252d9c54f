"""Open an HTML page in headless Chromium (Debian's `chromium`; .ci/run installs it) and check what it shows."""

from __future__ import annotations

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


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 1600) -> Path:
    """A PNG of `page` as headless Chromium renders it, with a fresh profile and no network."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={png}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    return png


def colours(png: Path) -> int:
    """How many distinct colours the screenshot has (1: a blank page)."""
    from PIL import Image

    with Image.open(png) as img:
        found = img.convert("RGB").getcolors(maxcolors=1 << 24)
    return len(found or ())


def assert_renders(page: Path, png: Path) -> None:
    """The page names no external URL and renders as more than one flat colour in a real browser."""
    text = page.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<!DOCTYPE html>")
    assert external_urls(text) == []
    assert colours(screenshot(page, png)) > 20
