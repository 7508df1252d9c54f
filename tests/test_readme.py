"""The README's commands do not go stale: each `softprompt …` line it shows parses against the CLI as it is now
(the command, every option and every choice value), and each `make …` line names a target `make help` lists.
The README is short and the docs site holds the rest (its pages are checked by tests/test_docs.py)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import typer
from conftest import REPO

from softprompt.cli import app

README = REPO / "README.md"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_lines(markdown: str) -> list[list[str]]:
    """The commands of the ```bash blocks, one token list per command (continuations joined, comments and
    leading VAR=value assignments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and ENV_ASSIGNMENT.match(tokens[0]):
                tokens = tokens[1:]
            if tokens:
                lines.append(tokens)
    return lines


def make_targets() -> set[str]:
    proc = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def parse_cli(args: list[str]) -> None:
    """Parse `softprompt ARGS` as the CLI would, without running the command: a usage error (unknown command or
    option, a bad choice, a missing required option) raises."""
    command = typer.main.get_command(app)
    name = "softprompt"
    while isinstance(command, typer.main.TyperGroup) and args and not args[0].startswith("-"):
        sub = command.get_command(typer.Context(command), args[0])
        if sub is None:
            raise LookupError(f"{name} has no command {args[0]}")
        name, command, args = f"{name} {args[0]}", sub, args[1:]
    command.make_context(name, list(args))


def readme_commands(program: str) -> list[list[str]]:
    return [tokens for tokens in shell_lines(README.read_text(encoding="utf-8")) if tokens[0] == program]


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("tokens", readme_commands("softprompt"), ids=" ".join)
def test_readme_softprompt_command_parses(tokens):
    parse_cli(tokens[1:])


def test_readme_make_commands_exist():
    """Each `make TARGET VAR=value` line names a listed target, and each variable it sets is one the Makefile
    reads (`VAR ?=`)."""
    targets = make_targets()
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    shown = readme_commands("make")
    assert {"setup", "test", "test-fast", "pipeline-run"} <= {tokens[1] for tokens in shown}
    assert [tokens[1] for tokens in shown if tokens[1] not in targets] == []
    variables = {arg.split("=")[0] for tokens in shown for arg in tokens[2:]}
    assert [v for v in variables if not re.search(rf"^{v} \?=", makefile, flags=re.MULTILINE)] == []


@pytest.mark.parametrize(("args", "error"), [
    (["train", "--task", "rte", "--output", "p", "--no-such-option"], "No such option"),
    (["train", "--task", "rte", "--output", "p", "--init", "zeros"], "'zeros' is not one of"),
    (["train", "--output", "p"], "Missing parameter: task"),
    (["registry", "demote"], "has no command demote"),
])
def test_parse_cli_refuses_what_the_cli_refuses(args, error):
    """The check is not vacuous: an unknown option, a bad choice, a missing option, an unknown command."""
    with pytest.raises((typer.TyperException, LookupError), match=error):
        parse_cli(args)
