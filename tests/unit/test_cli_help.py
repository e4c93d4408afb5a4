"""`orderflow … --help` reads as prose: no raw type tags, no word broken across lines."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orderflow.cli import app

COMMAND: Any = typer.main.get_command(app)  # a group of commands (typer's own click)
# serve's help comes from its own parser: test_serve_help_is_the_lean_parser_s below.
COMMANDS = sorted(name for name in COMMAND.commands if name != "serve")


def words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z][A-Za-z_*-]{3,}", text))


@pytest.mark.parametrize("width", [60, 100])
@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_has_no_type_tags_and_no_broken_words(name: str, width: int) -> None:
    args = [name, "--help"] if name else ["--help"]
    result = CliRunner().invoke(app, args, terminal_width=width, env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    shown = result.output
    assert not re.search(r"<(bool|int|str|float|path|list|text)\b", shown, flags=re.I), shown
    assert "╭" not in shown  # plain text, so it survives a pipe, a log and a narrow terminal
    command = COMMAND.commands[name] if name else COMMAND
    expected: set[str] = words(command.help or "")
    for param in command.params:
        expected |= words(getattr(param, "help", None) or "")
    on_screen = words(shown)
    assert expected <= on_screen, f"broken or missing words: {sorted(expected - on_screen)}"
    assert max(len(line) for line in shown.splitlines()) <= width


def test_serve_help_is_the_lean_parser_s(capsys: pytest.CaptureFixture[str]) -> None:
    from orderflow.boot import serve_parser

    with pytest.raises(SystemExit) as exit_info:
        serve_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "orders,inventory,loyalty,gateway" in shown
    assert "<bool>" not in shown
