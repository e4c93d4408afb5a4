"""Capacity arithmetic from a bench run: what 1,000 and 10,000 orders/s would need.

    python -m bench.capacity bench/results.json            # prints the Markdown tables

It takes orderflow per service on PostgreSQL with JetStream (mode per-service-pg) at the
run's highest concurrency, with the CPU each process spent per order until the order was
settled (its events' follow-up included), and the PostgreSQL and NATS servers' CPU and work
per order (bench/run.py's Servers), and scales them:

- cores = rate x CPU ms per order / 1000; each replica is one Python process, so it uses at
  most one core, and is planned at no more than UTILISATION of it (the rest is headroom for
  bursts, garbage collection and the slower hosts of a fleet), plus SPARE replicas so that
  losing one keeps the rest under that line;
- PostgreSQL: commits, rows written and WAL per second, its cores at the same utilisation,
  and the connections the replicas' pools may open (each process: pool size + as many
  overflow, ServiceSettings.db_pool_size);
- NATS: messages and bytes per second, its cores at the same utilisation.

docs/capacity.md quotes the output beside the hot-item limit (bench/hot_item.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.run import WORK, Measurement, runs_from_json

RATES = (1_000, 10_000)
UTILISATION = 0.6  # a replica or server planned at 60% of its cores: 40% headroom
SPARE = 1  # one more replica of each service than the load needs
SERVICES = ("gateway", "orders", "inventory", "loyalty")
MODE = "per-service-pg"


def pool_connections() -> int:
    """The most PostgreSQL connections one service process opens: its pool and as many
    again in overflow (platform/db.py create_database)."""
    from orderflow.settings import ServiceSettings

    size = ServiceSettings.model_fields["db_pool_size"].default
    return 2 * int(size)


def basis(runs: list[dict], mode: str = MODE) -> tuple[dict, Measurement]:
    """The run of `mode` and its measurement at the highest concurrency."""
    run = next((r for r in runs if r["mode"] == mode), None)
    if run is None:
        raise SystemExit(f"no {mode} run in these results")
    top = max(run["orderflow"], key=lambda m: m.concurrency)
    if not top.cpu_ms_settled or not top.work_per_order:
        raise SystemExit(f"{mode} at {top.concurrency} clients has no per-order server figures")
    return run, top


def replicas(cores: float) -> int:
    return max(1, math.ceil(cores / UTILISATION)) + SPARE


def plan(runs: list[dict], rates: tuple[int, ...] = RATES) -> str:
    run, m = basis(runs)
    work = m.work_per_order
    per = (
        f"per order confirmed in the window ({m.orders_in_window})"
        if m.orders_in_window is not None
        else f"per reply counted ({m.requests}; the work of the orders in flight when the "
        "load stopped is in the window too, so these are a few percent high)"
    )
    lines = [
        f"Basis: `{run['mode']}` at {m.concurrency} clients, commit {run.get('commit', '?')}: "
        f"{m.rps:.1f} orders/s measured, CPU until settled, {per}. Utilisation planned: "
        f"{UTILISATION:.0%} of a core per replica or server core ({1 - UTILISATION:.0%} "
        f"headroom), plus {SPARE} spare replica per service.",
        "",
        "Service replicas (one Python process each: at most one core):",
        "",
        "| process | CPU ms/order | "
        + " | ".join(f"cores at {r:,}/s | replicas at {r:,}/s" for r in rates)
        + " |",
        "|---|---:|" + "---:|---:|" * len(rates),
    ]
    total = {r: 0 for r in rates}
    for name in SERVICES:
        ms = m.cpu_ms_settled.get(name)
        if ms is None:
            continue
        cells = [name, f"{ms:.2f}"]
        for r in rates:
            cores = r * ms / 1000
            n = replicas(cores)
            total[r] += n
            cells += [
                f"{r:,} x {ms:.2f} / 1000 = {cores:.1f}",
                f"ceil({cores:.1f} / {UTILISATION}) + {SPARE} = {n}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "| all | "
        + f"{m.cpu_ms_settled_total:.2f} | "
        + " | ".join(
            f"{r * (m.cpu_ms_settled_total or 0) / 1000:.1f} | {total[r]} processes" for r in rates
        )
        + " |"
    )
    lines += [
        "",
        "PostgreSQL (the three services' databases; each may have a server of its own):",
        "",
    ]
    lines += [
        "| figure | per order | " + " | ".join(f"at {r:,}/s" for r in rates) + " |",
        "|---|---:|" + "---:|" * len(rates),
    ]
    for key, what in (("pg_commits", "commits"), ("pg_rows_written", "rows written")):
        for label in ("", ".orders", ".inventory", ".loyalty"):
            value = work.get(key + label)
            if value is None:
                continue
            name = f"{what} ({label[1:]} database)" if label else f"{what}, all databases"
            lines.append(
                f"| {name} | {value:.1f} | "
                + " | ".join(f"{r * value:,.0f}/s" for r in rates)
                + " |"
            )
    if "wal_kb" in work:
        wal = work["wal_kb"]
        lines.append(
            f"| WAL | {wal:.1f} kB | "
            + " | ".join(f"{r * wal / 1024:,.1f} MB/s" for r in rates)
            + " |"
        )
    pg_ms = m.server_cpu_ms_per_order.get("postgres")
    if pg_ms is not None:
        lines.append(
            f"| CPU | {pg_ms:.2f} ms | "
            + " | ".join(
                f"{r * pg_ms / 1000:.1f} cores used, {math.ceil(r * pg_ms / 1000 / UTILISATION)} "
                "provisioned"
                for r in rates
            )
            + " |"
        )
    per_process = pool_connections()
    for name in ("orders", "inventory", "loyalty"):
        ms = m.cpu_ms_settled.get(name)
        if ms is None:
            continue
        lines.append(
            f"| connections, {name} database | {per_process} per replica | "
            + " | ".join(f"{replicas(r * ms / 1000) * per_process:,}" for r in rates)
            + " |"
        )
    lines += [
        "",
        "NATS JetStream (one stream, file storage, as measured: one server, no replicas):",
        "",
    ]
    lines += [
        "| figure | per order | " + " | ".join(f"at {r:,}/s" for r in rates) + " |",
        "|---|---:|" + "---:|" * len(rates),
    ]
    if "nats_messages" in work:
        msgs = work["nats_messages"]
        lines.append(
            f"| messages | {msgs:.1f} | " + " | ".join(f"{r * msgs:,.0f}/s" for r in rates) + " |"
        )
    if "nats_kb" in work:
        kb = work["nats_kb"]
        lines.append(
            f"| stored | {kb:.2f} kB | "
            + " | ".join(f"{r * kb / 1024:,.1f} MB/s" for r in rates)
            + " |"
        )
    nats_ms = m.server_cpu_ms_per_order.get("nats-server")
    if nats_ms is not None:
        lines.append(
            f"| CPU | {nats_ms:.2f} ms | "
            + " | ".join(
                f"{r * nats_ms / 1000:.1f} cores used, "
                f"{math.ceil(r * nats_ms / 1000 / UTILISATION)} provisioned"
                for r in rates
            )
            + " |"
        )
    idle = m.idle_per_s
    if idle:
        lines += [
            "",
            "Idle, per second (each replica's relays and consumers polling; what a replica "
            "costs with no orders): CPU ms "
            + ", ".join(f"{n} {v:.1f}" for n, v in idle.items() if n not in WORK and "." not in n)
            + (f"; PostgreSQL commits {idle['pg_commits']:.1f}" if "pg_commits" in idle else "")
            + ".",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("results", type=Path, help="bench/results.json of a `make bench` run")
    args = parser.parse_args(argv)
    print(plan(runs_from_json(json.loads(args.results.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
