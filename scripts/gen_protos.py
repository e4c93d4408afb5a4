"""Generate the gRPC stubs under src/ from proto/, or with --check fail when they are stale."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
SRC = ROOT / "src"
SERVICES = ("orders", "inventory", "loyalty")


def generate(out: Path) -> list[Path]:
    """Run protoc for every service proto into out; return the generated files (relative)."""
    include = Path(protoc.__file__).parent / "_proto"
    produced: list[Path] = []
    for service in SERVICES:
        proto = PROTO / "orderflow" / service / "v1" / f"{service}.proto"
        (out / "orderflow" / service / "v1").mkdir(parents=True, exist_ok=True)
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO}",
                f"-I{include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(proto),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed for {proto}")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            produced.append(Path("orderflow") / service / "v1" / f"{service}{suffix}")
    return produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = [
            rel
            for rel in produced
            if not (SRC / rel).exists()
            or not filecmp.cmp(Path(tmp) / rel, SRC / rel, shallow=False)
        ]
        if args.check:
            for rel in stale:
                print(f"stale generated stub: src/{rel} (run: make protos)", file=sys.stderr)
            return 1 if stale else 0
        for rel in produced:
            shutil.copyfile(Path(tmp) / rel, SRC / rel)
            print(f"wrote src/{rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
