"""`make audit` (scripts/audit.py): fails on a known vulnerability, whichever way it was found."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The index's per-project JSON: advisories describe the newest release.
PROJECTS = {
    "pydantic": {"info": {"version": "9.9.9"}, "vulnerabilities": []},
    "httpx": {
        "info": {"version": "0.28.1"},
        "vulnerabilities": [{"id": "PYSEC-0000-1", "aliases": ["CVE-0000-1"], "fixed_in": []}],
    },
    "typer": {"info": {"version": "0.29.2"}, "vulnerabilities": []},
}


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    class Index(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.strip("/").split("/")[-2]
            body = json.dumps(PROJECTS[name]).encode() if name in PROJECTS else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "index_json_url", lambda: f"http://127.0.0.1:{server.server_port}")
    yield module
    server.shutdown()
    server.server_close()


def _run(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, deps: list[dict[str, Any]], *argv: str
) -> int:
    monkeypatch.setattr(audit, "pip_audit", lambda: deps)
    monkeypatch.setattr(sys, "argv", ["audit.py", *argv])
    return int(audit.main())


def skipped(name: str) -> dict[str, Any]:
    return {"name": name, "skip_reason": f"Dependency not found on PyPI: {name}"}


def test_a_vulnerability_pip_audit_found_fails(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = {
        "name": "typer",
        "version": "0.29.2",
        "vulns": [{"id": "GHSA-x", "fix_versions": ["1"]}],
    }
    assert _run(audit, monkeypatch, [found]) == 1
    assert _run(audit, monkeypatch, [{**found, "vulns": []}]) == 0


def test_a_vulnerability_of_the_newest_release_found_by_project_fails(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(audit, monkeypatch, [skipped("typer")]) == 0  # at the newest, no advisories
    assert _run(audit, monkeypatch, [skipped("httpx")]) == 1  # at the newest, one advisory
    assert "PYSEC-0000-1" in capsys.readouterr().out


def test_a_stale_pin_is_reported_and_fails_only_when_currency_is_required(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(audit, monkeypatch, [skipped("pydantic")]) == 0
    assert "newest 9.9.9" in capsys.readouterr().out
    assert _run(audit, monkeypatch, [skipped("pydantic")], "--require-current") == 1


def test_a_dependency_audited_by_neither_way_fails(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(audit, monkeypatch, [skipped("no-such-project")]) == 1
