"""MkDocs hooks (mkdocs.yml `hooks:`): the pages generated at build time, so no reference page is written by hand.

- `cli.md`: the command-line reference, written by typer's own docs generator (`typer MODULE utils docs`) from
  the typer apps themselves, so every option, default and help text is the one `--help` prints.
- `api/<module>.md`: one mkdocstrings page per module of src/softprompt (`::: softprompt.x`), listed in the
  nav under "API reference"; a new module gets its page without editing anything.
- `benchmarks/results/replication.png`: the replication's plot, served from where `make replicate` writes it.

Invariant: every generated page exists only in the build (nothing is written into docs/), and a generator that
fails stops the build with a one-line error naming the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "softprompt"
# (the module holding the typer app, the program name a user types, a sentence on what it is)
CLIS = (
    ("softprompt.cli", "softprompt", "The package's command line (`pip install` puts it on PATH)."),
    ("pipelines.run", "python -m pipelines.run",
     "The Kubeflow pipeline's runner, behind `make pipeline-run`, `pipeline-compile`, `pipeline-upload` and "
     "`pipeline-schedule`."),
    ("softprompt.cluster", "python -m softprompt.cluster",
     "The cluster settings of params.yaml as the image build and Terraform read them (`make image`, "
     "`make infra-tfvars`)."),
)
STATIC = ("benchmarks/results/replication.png",)


def modules() -> list[str]:
    """Every importable module of the package, dotted, in path order (private `_x` modules left out)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            found.append(".".join(parts))
    return found


def cli_docs(module: str, name: str) -> str:
    """The Markdown typer's docs generator writes for the app in `module` (run as a subprocess: typer's public
    command, in the environment the CLI itself runs in)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "typer", module, "utils", "docs", "--name", name],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PluginError(f"docs/hooks.py: `typer {module} utils docs` failed: {last}")
    return proc.stdout


def cli_page() -> str:
    """One page for the three command lines; typer's headings are moved one level down under each app's own."""
    out = ["# CLI reference\n\nGenerated at build time from the typer apps by `typer MODULE utils docs`: each "
           "option's default is the params.yaml value it shows in `--help`.\n"]
    for module, name, about in CLIS:
        text = cli_docs(module, name)
        body = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        out.append(f"{about}\n\n{body}\n")
    return "\n".join(out)


def api_page(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the API reference (one entry per module) to the nav written in mkdocs.yml."""
    config.nav = [*(config.nav or []), {"API reference": [{m: f"api/{m}.md"} for m in modules()]}]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_page()))
    for module in modules():
        files.append(File.generated(config, f"api/{module}.md", content=api_page(module)))
    for rel in STATIC:
        files.append(File.generated(config, rel, abs_src_path=str(ROOT / rel)))
    return files
