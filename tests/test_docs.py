"""The docs site (`make docs`): it builds with --strict, its generated CLI and API pages come from the code, and
its pages render in headless Chromium with no external request.

`make test` builds the site once (`make docs`) and passes it in SOFTPROMPT_DOCS_SITE; run alone, this file
builds its own copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from browser import colours, page_requests, screenshot
from conftest import REPO

from softprompt.cli import app

pytestmark = [pytest.mark.docs, pytest.mark.xdist_group("docs")]

# A resource the browser would load from another host: a stylesheet, script, image or frame with an absolute or
# protocol-relative URL, or one in CSS. (Links to other sites, <a href>, are fine: nothing is fetched.)
REMOTE_RESOURCE = re.compile(r"""<(?:link|script|img|iframe|source|video|audio)\b[^>]*\b(?:src|href)\s*=\s*["']?"""
                             r"""(?:[a-z][a-z0-9+.-]*:)?//|url\(\s*["']?(?:[a-z][a-z0-9+.-]*:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: `make test`'s (SOFTPROMPT_DOCS_SITE), else a --strict build of this checkout's docs."""
    if given := os.environ.get("SOFTPROMPT_DOCS_SITE"):
        return Path(given)
    out = tmp_path_factory.mktemp("site")
    proc = build(REPO, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def build(root: Path, out: Path) -> subprocess.CompletedProcess:
    """`make docs`'s build of the checkout at `root` (not --quiet: with it, --strict lets warnings pass)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_a_broken_link_fails_the_build(tmp_path):
    """--strict is in force: a page linking to a page that does not exist stops the build, naming both."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "mkdocs.yml", root)
    shutil.copytree(REPO / "docs", root / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("src", "pipelines", "components", "infra", "benchmarks"):  # what the hooks and snippets read
        (root / name).symlink_to(REPO / name)
    with (root / "docs" / "development.md").open("a", encoding="utf-8") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    proc = build(root, tmp_path / "site")
    assert proc.returncode == 1
    assert "'development.md' contains a link 'no-such-page.md'" in proc.stderr


def commands(group: typer.main.TyperGroup, prefix: str = "softprompt") -> list[str]:
    """Every command path of the CLI, e.g. `softprompt registry promote`."""
    ctx = typer.Context(group)
    found = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        found.append(f"{prefix} {name}")
        if isinstance(sub, typer.main.TyperGroup):
            found += commands(sub, f"{prefix} {name}")
    return found


def test_cli_page_documents_every_command_and_option(site):
    """The CLI reference is generated from the typer app: each command has its section, with each option."""
    page = (site / "cli.html").read_text(encoding="utf-8")
    cli = typer.main.get_command(app)
    paths = commands(cli)
    assert "softprompt registry promote" in paths and len(paths) > 12
    for path in paths:
        assert f"<code>{path}</code>" in page, path
    train = cli.get_command(typer.Context(cli), "train")
    options = [o for p in train.params for o in p.opts if o.startswith("--")]
    assert "--prompt-length" in options
    for option in options:
        assert option in page, option
    for other in ("python -m pipelines.run run", "python -m softprompt.cluster tfvars"):
        assert f"<code>{other}</code>" in page, other


def test_api_pages_render_the_docstrings(site):
    """mkdocstrings wrote one page per module from its docstrings (TrainConfig's own first line included)."""
    from softprompt.config import TrainConfig

    modules = sorted(p.stem for p in (site / "api").glob("softprompt*.html"))
    assert {"softprompt.config", "softprompt.serving.batcher", "softprompt.registry.versions"} <= set(modules)
    page = (site / "api" / "softprompt.config.html").read_text(encoding="utf-8")
    first_line = TrainConfig.__doc__.strip().splitlines()[0]
    assert 'id="softprompt.config.TrainConfig"' in page
    assert first_line.split("`")[0].strip() in page


@pytest.mark.browser
@pytest.mark.parametrize("name", ["index.html", "cli.html", "api/softprompt.config.html"])
def test_page_renders_offline_in_chromium(site, tmp_path, name):
    """The landing page, the CLI page and an API page render as styled pages (Material's CSS applied: colour,
    not bare text) and neither the markup nor the running page asks for anything outside the site."""
    page = site / name
    text = page.read_text(encoding="utf-8")
    assert REMOTE_RESOURCE.findall(text) == []
    net_log = tmp_path / "net.json"
    distinct, coloured = colours(screenshot(page, tmp_path / "page.png", net_log=net_log))
    assert distinct > 20 and coloured > 200, (distinct, coloured)
    assert page_requests(net_log) == []


@pytest.mark.browser
def test_request_check_sees_a_page_fetch(tmp_path):
    """The network-log check is not vacuous: a page that loads an image from another host is caught."""
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.com/x.png">text</body></html>')
    net_log = tmp_path / "net.json"
    screenshot(page, tmp_path / "page.png", net_log=net_log)
    assert page_requests(net_log) == ["https://example.com/x.png"]
