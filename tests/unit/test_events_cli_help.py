"""`orderflow events … --help` reads as prose, like every other command's help."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orderflow.cli import app

GROUP: Any = typer.main.get_command(app).commands["events"]  # type: ignore[attr-defined]


def words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z][A-Za-z_*-]{3,}", text))


def test_the_events_group_has_its_three_commands() -> None:
    assert set(GROUP.commands) == {"tail", "parked", "redrive"}


@pytest.mark.parametrize("width", [60, 100])
@pytest.mark.parametrize("name", ["tail", "parked", "redrive"])
def test_help_has_no_type_tags_and_no_broken_words(name: str, width: int) -> None:
    result = CliRunner().invoke(
        app, ["events", name, "--help"], terminal_width=width, env={"COLUMNS": str(width)}
    )
    assert result.exit_code == 0, result.output
    shown = result.output
    assert not re.search(r"<(bool|int|str|float|path|list|text)\b", shown, flags=re.I), shown
    assert "╭" not in shown
    command = GROUP.commands[name]
    expected: set[str] = words(command.help or "")
    for param in command.params:
        expected |= words(getattr(param, "help", None) or "")
    assert expected <= words(shown), f"broken or missing words: {sorted(expected - words(shown))}"
    assert max(len(line) for line in shown.splitlines()) <= width
