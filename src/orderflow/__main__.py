"""`orderflow` (the console script) and `python -m orderflow`.

`orderflow serve ...` goes straight to the lean serving path, which parses its own
arguments (orderflow.boot.serve_parser); everything else goes through the full command
line (orderflow.cli).
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        from orderflow.boot import serve_main

        serve_main(args[1:])
        return
    from orderflow.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
