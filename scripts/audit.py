"""Audit the installed (pinned) dependencies for known vulnerabilities: `make audit`.

pip-audit does the work where it can: it lists what is installed in the environment and
asks the package index's JSON API for each version's advisories. Where the index answers
only per project, not per version (this project's machines reach such an index, and no
other advisory service: see ADR 15), a dependency pip-audit had to skip is looked up by
project instead: the project's advisories describe its newest release, so a pin at the
newest release is audited exactly, and an older pin is reported as stale (update it, and
it is audited). Exit 1 on any known vulnerability, or on a dependency audited by neither
way; stale pins fail only with --require-current.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def own_name() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"])


def pip_audit() -> list[dict[str, Any]]:
    done = subprocess.run(
        [Path(sys.executable).parent / "pip-audit", "--skip-editable", "--progress-spinner",
         "off", "--format", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not done.stdout.strip():
        sys.exit(f"pip-audit gave no report (exit {done.returncode}):\n{done.stderr}")
    dependencies: list[dict[str, Any]] = json.loads(done.stdout)["dependencies"]
    return dependencies


def index_json_url() -> str:
    """The package index's JSON API, as pip knows it (no host written here)."""
    from pip._internal.models.index import PyPI

    return str(PyPI.pypi_url)


def project_advisories(base: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """(newest version, advisories of that version) from the project's JSON."""
    with urllib.request.urlopen(f"{base}/{name}/json", timeout=30) as reply:
        project = json.load(reply)
    advisories = [v for v in project.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return str(project["info"]["version"]), advisories


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-current", action="store_true", help="fail on stale pins")
    args = parser.parse_args()
    base = index_json_url()
    vulnerable: list[str] = []
    stale: list[str] = []
    unaudited: list[str] = []
    audited = 0
    for dep in pip_audit():
        name = dep["name"]
        if name == own_name():
            continue  # this project, installed editable: not a dependency
        if "skip_reason" not in dep:
            audited += 1
            vulnerable += [f"{name} {dep['version']}: {v['id']} (fixed in {v['fix_versions']})"
                           for v in dep.get("vulns", [])]  # fmt: skip
            continue
        try:
            installed = version(name)
            newest, advisories = project_advisories(base, name)
        except (PackageNotFoundError, urllib.error.URLError, KeyError, ValueError) as exc:
            unaudited.append(f"{name}: {dep['skip_reason']}; by project: {exc}")
            continue
        if installed != newest:
            stale.append(f"{name} {installed} (newest {newest})")
            continue
        audited += 1
        for advisory in advisories:
            aliases = ", ".join(advisory.get("aliases") or [])
            fixed = ", ".join(advisory.get("fixed_in") or []) or "no fix yet"
            vulnerable.append(f"{name} {installed}: {advisory['id']} {aliases} ({fixed})")
    print(f"audited {audited} dependencies")
    for title, lines in (
        ("known vulnerabilities", vulnerable),
        ("stale pins (not audited: the index describes only the newest release)", stale),
        ("could not be audited", unaudited),
    ):
        if lines:
            print(f"{title}:", *(f"  {line}" for line in lines), sep="\n")
    failed = vulnerable or unaudited or (stale and args.require_current)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
