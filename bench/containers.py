"""Image sizes and idle memory of the compose deployments, recorded in bench/CONTAINERS.md.

Builds the images with podman (scripts/podman-env.sh), starts multi.yaml and single.yaml,
waits until each gateway is ready and a few seconds more, and reads the memory of every
container's processes from /proc on the host: RSS (what each process has resident,
shared libraries counted in full) and PSS (pages shared between processes split among
them, so the PSS of all containers adds up to what they use together).

    python -m bench.containers --record bench/CONTAINERS.md      (as root, with podman)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.deploy.podman import (
    Deployment,
    PodmanSession,
    build_images,
    free_port,
    podman_usable,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("service", "gateway", "onebox", "postgres")
BASE = "localhost/debian-python:bookworm"
SETTLE_SECONDS = 10


def image_size_mb(session: PodmanSession, image: str) -> float:
    out = session.podman("image", "inspect", "--format", "{{.Size}}", image).check().stdout
    return int(out.strip()) / 1e6


def measure(deployment: Deployment, extra: tuple[str, ...] = ()) -> list[tuple[str, float, float]]:
    """Start, wait until ready and idle, then (container, RSS MiB, PSS MiB) for each one."""
    rows = []
    try:
        deployment.up(*extra)
        deployment.wait_ready()
        time.sleep(SETTLE_SECONDS)
        for name in deployment.containers():
            rss, pss = deployment.memory(name)
            short = name.removeprefix(f"{deployment.project}_")
            rows.append((short, rss, pss))
    finally:
        left = deployment.down()
        if left:
            print(f"left behind: {left}", file=sys.stderr)
    return rows


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip() or "unknown"


def render(
    sizes: dict[str, float], build_seconds: float, runs: dict[str, list[tuple[str, float, float]]]
) -> str:
    memory = psutil.virtual_memory().total / 2**30
    lines = [
        "# Containers: image sizes and idle memory",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB; "
        f"podman {podman_version()}; commit {commit()}; {datetime.date.today()}.",
        "",
        f"Images built from `{BASE}` (Debian bookworm's python3 3.11, debootstrap "
        "minbase without documentation, translations or apt lists), as "
        "`scripts/podman-env.sh images` builds them; with the layer cache warm the build "
        f"took {build_seconds:.0f} s in this run.",
        "",
        "Reproduce (as root, with podman): `python -m bench.containers --record "
        "bench/CONTAINERS.md`.",
        "",
        "## Image sizes",
        "",
        "| image | size MB | over the base MB | what it carries |",
        "|---|---:|---:|---|",
    ]
    what = {
        "base": "Debian minbase + python3 + venv + CA certificates",
        "service": "orders / inventory / loyalty: gRPC, SQLAlchemy, asyncpg, aiosqlite, Alembic",
        "gateway": "gateway: FastAPI, uvicorn, gRPC clients; no database drivers",
        "onebox": "everything, for `orderflow run`",
        "postgres": "PostgreSQL 15 from Debian without the LLVM JIT; no orderflow code",
    }
    base = sizes["base"]
    for name, size in sizes.items():
        over = "" if name == "base" else f"{size - base:.0f}"
        lines.append(f"| {name} | {size:.0f} | {over} | {what[name]} |")
    for title, rows in runs.items():
        lines += [
            "",
            f"## Idle memory: {title}",
            "",
            f"Measured {SETTLE_SECONDS} s after the gateway's /readyz first answered 200, "
            "before any request.",
            "",
            "| container | RSS MiB | PSS MiB |",
            "|---|---:|---:|",
        ]
        for name, rss, pss in rows:
            lines.append(f"| {name} | {rss:.0f} | {pss:.0f} |")
        lines.append(
            f"| **all** | {sum(r for _, r, _ in rows):.0f} | {sum(p for _, _, p in rows):.0f} |"
        )
    return "\n".join(lines) + "\n"


def podman_version() -> str:
    done = subprocess.run(["podman", "--version"], capture_output=True, text=True)
    return done.stdout.split()[-1] if done.returncode == 0 else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, help="write the results to this Markdown file")
    args = parser.parse_args()
    reason = podman_usable()
    if reason:
        print(f"cannot measure containers here: {reason}", file=sys.stderr)
        return 2
    secret = secrets.token_hex(32)
    project = f"ofbench{os.getpid()}"
    with PodmanSession() as session:
        build_images(session)  # the first build fills the cache; the second is timed
        build_seconds = build_images(session)
        sizes = {"base": image_size_mb(session, BASE)}
        for image in IMAGES:
            sizes[image] = image_size_mb(session, f"localhost/orderflow-{image}:dev")
        runs = {
            "multi.yaml (a container per component, PostgreSQL)": measure(
                Deployment(session, "multi.yaml", project, free_port(), secret)
            ),
            "multi.yaml with `--scale inventory=2`": measure(
                Deployment(session, "multi.yaml", project, free_port(), secret),
                ("--scale", "inventory=2"),
            ),
            "single.yaml (everything in one container)": measure(
                Deployment(
                    session,
                    "single.yaml",
                    f"{project}single",
                    free_port(),
                    secret,
                    env={"ORDERFLOW_GRPC_PUBLISH": f"127.0.0.1:{free_port()}"},
                )
            ),
        }
    text = render(sizes, build_seconds, runs)
    print(text)
    if args.record:
        args.record.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
