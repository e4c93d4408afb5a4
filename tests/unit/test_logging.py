"""Log lines reach the stream whole: each in one write, so that processes sharing one
stream (the workers of `orderflow run`, containers' stderr) never interleave a line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest
import structlog

from orderflow.platform.logging import configure_logging


class Recorder:
    """A text stream that keeps each write apart, as an unbuffered stream would."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Any:
    # Set in the test's own phase: pytest puts its capture back on sys.stderr at each phase.
    recorder = Recorder()
    yield lambda: monkeypatch.setattr(sys, "stderr", recorder) or recorder
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_each_line_is_one_write_of_one_json_object(stderr: Any) -> None:
    recorder = stderr()
    configure_logging("INFO", "json", component="orders")
    structlog.get_logger("test").info("worker_stopping", worker="inventory", pid=42)
    logging.getLogger("uvicorn.error").warning("from the standard library")
    assert len(recorder.writes) == 2, recorder.writes
    for write in recorder.writes:
        assert write.endswith("\n") and write.count("\n") == 1, write
    first, second = (json.loads(w) for w in recorder.writes)
    assert (first["event"], first["worker"], first["component"]) == (
        "worker_stopping",
        "inventory",
        "orders",
    )
    assert (second["event"], second["level"]) == ("from the standard library", "warning")
