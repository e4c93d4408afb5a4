"""`orderflow events ...`: follow events, list parked ones, redrive one (ADR 20).

Events are read where they are: with ORDERFLOW_NATS_URL from the JetStream stream, without
it from the services' outbox tables in their own databases (ORDERFLOW_<SERVICE>_DATABASE_URL,
or `--data-dir` as given to `orderflow run`). Parked events are always in the services'
databases. Exit codes: 0 done, 1 not found / failed again / a database could not be
read, 2 usage or configuration, 3 a redrive asked for but not handled within --wait.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orderflow import boot, registry

if TYPE_CHECKING:
    from orderflow.events.operations import EventsDatabase
    from orderflow.events.registry import EventType
    from orderflow.events.settings import EventsSettings

events_app = typer.Typer(
    help="Follow the services' events, list parked ones, redrive one.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

ServicesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        metavar="SERVICE",
        help=f"only this service's database (repeatable; of {', '.join(registry.SERVICE_NAMES)})",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="where `orderflow run --data-dir` keeps its SQLite files (for services whose "
        "ORDERFLOW_<SERVICE>_DATABASE_URL is unset)",
        show_default=False,
    ),
]


class _PlainArguments(typer.core.TyperCommand):
    """Help that shows an argument by its name and help, without a type tag (`<str>`), as
    `orderflow`'s other commands do."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        arguments = [
            (p.metavar or p.name, getattr(p, "help", None) or "")
            for p in params
            if p.param_type_name == "argument" and not getattr(p, "hidden", False)
        ]
        options = [
            record
            for p in params
            if p.param_type_name == "option" and (record := p.get_help_record(ctx))
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _chosen(services: list[str] | None) -> list[str]:
    for name in services or []:
        if name not in registry.SERVICE_NAMES:
            known = ", ".join(registry.SERVICE_NAMES)
            raise typer.BadParameter(f"{name!r} is not a service; the services are {known}")
    return services or list(registry.SERVICE_NAMES)


async def _open(
    services: list[str], data_dir: Path | None, *, explicit: bool
) -> tuple[list[EventsDatabase], bool]:
    """The services' event databases that could be opened, and whether any failed. A
    SQLite file that does not exist is skipped with a note unless the service was named."""
    from orderflow.events.operations import (
        AdminError,
        EventsDatabase,
        NoDatabaseError,
        service_databases,
    )

    opened = []
    failed = False
    for where in service_databases(services, boot.service_settings, data_dir):
        db = EventsDatabase(where)
        try:
            await db.open()
        except NoDatabaseError as exc:
            if explicit:
                _say(f"error: {exc}")
                failed = True
            else:
                _say(f"note: {exc}; skipped")
            continue
        except AdminError as exc:
            _say(f"error: {exc}")
            failed = True
            continue
        opened.append(db)
    return opened, failed


async def _close(dbs: Sequence[EventsDatabase]) -> None:
    for db in dbs:
        await db.close()


def _print_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


TAIL_HELP = (
    "Print events as CloudEvents JSON lines (structured mode), following new ones.\n\n"
    "With ORDERFLOW_NATS_URL: from the JetStream stream (an ephemeral ordered consumer). "
    "Without it, or with --outbox: from the services' outbox tables in their databases "
    "(an event shows once its transaction commits, maybe before it is published)."
)


@events_app.command(help=TAIL_HELP)
def tail(
    type_: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="only this event type (order.confirmed or orderflow.order.confirmed.v1)",
        ),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            help="only events about this aggregate (its order id, sku or customer id)",
            show_default=False,
        ),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start", help="first every event still kept (stream, or outbox retention)"
        ),
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="exit after this many events", show_default=False),
    ] = None,
    outbox: Annotated[
        bool,
        typer.Option(
            "--outbox",
            help="read the services' outbox tables even when ORDERFLOW_NATS_URL is set",
        ),
    ] = False,
    services: ServicesOption = None,
    data_dir: DataDirOption = None,
    poll: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0.05, max=60, help="seconds between reads of the outboxes"
        ),
    ] = 0.5,
) -> None:
    from orderflow.events.registry import UnknownEventTypeError, event_type
    from orderflow.events.settings import EventsSettings

    try:
        kind = event_type(type_) if type_ is not None else None
    except UnknownEventTypeError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(2) from None
    settings = boot.load_settings(EventsSettings)
    chosen = _chosen(services)
    if kind is not None and kind.source not in chosen:
        _say(f"error: {kind.name} is emitted by {kind.source}, which --service leaves out")
        raise typer.Exit(2)
    code = asyncio.run(
        _tail_jetstream(settings, kind, subject, from_start, count)
        if settings.nats_url and not outbox
        else _tail_outboxes(
            kind, subject, from_start, count, chosen, data_dir, poll, bool(services)
        )
    )
    raise typer.Exit(code)


async def _tail_jetstream(
    settings: EventsSettings,
    kind: EventType | None,
    subject: str | None,
    from_start: bool,
    count: int | None,
) -> int:
    from orderflow.events.operations import AdminError, follow_jetstream

    shown = 0

    def ready() -> None:
        _say(
            f"following stream {settings.events_stream} at {settings.nats_url}"
            + (" from its start" if from_start else " (new events)")
        )

    try:
        async for event, raw in follow_jetstream(settings, kind, from_start, ready):
            if event is None:
                _say(f"note: skipped a message on {raw.subject} that is not an orderflow event")
                continue
            if subject is not None and event.subject != subject:
                continue
            _print_json(event.structured())
            shown += 1
            if count is not None and shown >= count:
                return 0
    except AdminError as exc:
        _say(f"error: {exc}")
        return 2
    return 0


async def _tail_outboxes(
    kind: EventType | None,
    subject: str | None,
    from_start: bool,
    count: int | None,
    chosen: list[str],
    data_dir: Path | None,
    poll: float,
    explicit: bool,
) -> int:
    from orderflow.events.operations import OutboxFollower, follow_outboxes

    if kind is not None:
        chosen = [kind.source]
    dbs, failed = await _open(chosen, data_dir, explicit=explicit)
    if failed or not dbs:
        if not failed:
            _say(
                "error: no service database found "
                "(set ORDERFLOW_<SERVICE>_DATABASE_URL, or --data-dir as given to orderflow run)"
            )
        await _close(dbs)
        return 2
    shown = 0
    try:
        followers = [OutboxFollower(db, from_start=from_start) for db in dbs]
        for follower in followers:
            await follower.start()
        # Said once the starting point is taken: what commits from now on is shown.
        _say(
            "following the outboxes of "
            + ", ".join(f"{db.service} ({db.where.describe()})" for db in dbs)
            + (" from the oldest kept" if from_start else " (new events)")
        )
        async for event in follow_outboxes(followers, poll):
            if kind is not None and event.type is not kind:
                continue
            if subject is not None and event.subject != subject:
                continue
            _print_json(event.structured())
            shown += 1
            if count is not None and shown >= count:
                break
    finally:
        await _close(dbs)
    return 0


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="seconds")


@events_app.command()
def parked(
    consumer: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="only this consumer's", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    services: ServicesOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List parked events (a consumer failed them too often) in the services' databases."""
    from orderflow.events.operations import all_parked

    async def main() -> int:
        dbs, failed = await _open(_chosen(services), data_dir, explicit=bool(services))
        try:
            found = [p for p in await all_parked(dbs) if consumer in (None, p.parked.consumer)]
        finally:
            await _close(dbs)
        if as_json:
            for item in found:
                p = item.parked
                _print_json(
                    {
                        "id": p.event_id,
                        "consumer": p.consumer,
                        "type": p.event_type,
                        "subject": item.aggregate,
                        "nats_subject": p.subject,
                        "attempts": p.attempts,
                        "last_error": p.last_error,
                        "parked_at": _when(p.parked_us),
                        "redrive_requested": p.redrive_requested,
                        "service": item.service,
                    }
                )
        elif found:
            rows = [
                (
                    p.parked.event_id,
                    p.parked.consumer,
                    p.parked.event_type,
                    p.aggregate or "-",
                    str(p.parked.attempts)
                    + (" (redrive asked)" if p.parked.redrive_requested else ""),
                    _when(p.parked.parked_us),
                    " ".join(p.parked.last_error.split())[:120],
                )
                for p in found
            ]
            head = ("ID", "CONSUMER", "TYPE", "SUBJECT", "ATTEMPTS", "PARKED AT", "LAST ERROR")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
            for r in [head, *rows]:
                typer.echo(
                    "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]])
                )
        if not as_json:
            where = ", ".join(db.service for db in dbs) or "no database"
            _say(f"{len(found)} parked event(s) in {where}")
        return 1 if failed else 0

    raise typer.Exit(asyncio.run(main()))


@events_app.command(cls=_PlainArguments)
def redrive(
    event_id: Annotated[str, typer.Argument(metavar="ID", help="the parked event's id")],
    consumer: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="only this consumer's (default: every consumer that parked it)"
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0,
            max=3600,
            help="seconds to wait for the consumer to handle it (0: don't)",
        ),
    ] = 10.0,
    services: ServicesOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Have a parked event handled again by the consumer that parked it."""
    from orderflow.events.operations import redrive as mark
    from orderflow.events.operations import redrive_outcome

    async def main() -> int:
        dbs, failed = await _open(_chosen(services), data_dir, explicit=bool(services))
        try:
            marked = await mark(dbs, event_id, consumer)
            if not marked:
                _say(f"error: no parked event {event_id}" + (f" of {consumer}" if consumer else ""))
                return 1
            for item in marked:
                kind, who = item.parked.event_type, item.parked.consumer
                _say(f"redrive asked: {event_id} ({kind}) for {who}")
            if wait == 0:
                return 0
            deadline = time.monotonic() + wait
            while True:
                handled, again, waiting = await redrive_outcome(dbs, marked)
                if not waiting or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            for item in handled:
                typer.echo(f"handled: {event_id} by {item.parked.consumer}")
            for item in again:
                typer.echo(
                    f"failed again: {event_id} by {item.parked.consumer} "
                    f"(attempts {item.parked.attempts}): {item.parked.last_error}"
                )
            for item in waiting:
                typer.echo(
                    f"not handled yet: {event_id} by {item.parked.consumer} after {wait:g} s "
                    f"(is the {item.service} service running?); it will be when it runs"
                )
            if again:
                return 1
            return 3 if waiting else (1 if failed else 0)
        finally:
            await _close(dbs)

    raise typer.Exit(asyncio.run(main()))
