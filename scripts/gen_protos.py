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
# Each proto package under proto/orderflow/: its file, and whether it declares gRPC
# services (events only defines messages, so it gets no _pb2_grpc.py). proto/google/ holds
# copies of the googleapis files the public API imports (for buf); their Python modules
# come from googleapis-common-protos, so nothing is generated for them.
PACKAGES = {
    "orders": ("orders", True),
    "inventory": ("inventory", True),
    "loyalty": ("loyalty", True),
    "events": ("events", False),
    "api": ("ordering", True),
}


def generate(out: Path) -> list[Path]:
    """Run protoc for every package's proto into out; return the generated files (relative)."""
    include = Path(protoc.__file__).parent / "_proto"
    produced: list[Path] = []
    for package, (name, has_services) in PACKAGES.items():
        proto = PROTO / "orderflow" / package / "v1" / f"{name}.proto"
        (out / "orderflow" / package / "v1").mkdir(parents=True, exist_ok=True)
        suffixes = ["_pb2.py", "_pb2.pyi"]
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
        ]
        if has_services:
            args.append(f"--grpc_python_out={out}")
            suffixes.append("_pb2_grpc.py")
        rc = protoc.main([*args, str(proto)])
        if rc != 0:
            raise SystemExit(f"protoc failed for {proto}")
        for suffix in suffixes:
            produced.append(Path("orderflow") / package / "v1" / f"{name}{suffix}")
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
