"""A service's events at run time: its relay and its consumer, started and stopped with it.

`ServiceEvents` is what a service's bootstrap builds from its database, its outbox, its
handlers and the process's bus; `platform.component` subscribes every consumer of a
process before it starts any relay (the in-process bus delivers only to consumers already
subscribed), and stops them before the databases close.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Generic

import structlog

from orderflow.events.bus import EventBus, InProcessBus
from orderflow.events.consumer import ConsumerRunner, Handler
from orderflow.events.metrics import EventMetrics
from orderflow.events.outbox import Outbox
from orderflow.events.relay import OutboxRelay
from orderflow.events.settings import EventsSettings
from orderflow.events.store import TransactionFactory, TxT

log = structlog.get_logger(__name__)


class ServiceEvents(Generic[TxT]):
    """The relay of one service's outbox and (when it has handlers) its consumer, named for
    the service (its durable consumer name). `owns_bus`: close the bus on stop (a bus of
    its own, not one shared by the services of one process)."""

    def __init__(
        self,
        service: str,
        bus: EventBus,
        begin: TransactionFactory[TxT],
        outbox: Outbox,
        handlers: Mapping[str, Handler[TxT]],
        settings: EventsSettings,
        *,
        owns_bus: bool,
    ) -> None:
        self.service = service
        self.bus = bus
        self.begin = begin
        self.outbox = outbox
        self.owns_bus = owns_bus
        self.relay = OutboxRelay(service, bus, begin, outbox.tables, **settings.relay_options())
        self.consumer = (
            ConsumerRunner(
                service, bus, begin, outbox.tables, handlers, **settings.consumer_options()
            )
            if handlers
            else None
        )
        self._started = False

    async def subscribe(self) -> None:
        """Subscribe the consumer (before any relay of the process starts). A broker that is
        not there yet is no error: the consumer subscribes once it is."""
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.subscribe()

    async def start(self, metrics: EventMetrics | None = None) -> None:
        if self._started:
            return
        self._started = True
        self.relay.metrics = metrics
        self.outbox.on_commit = self.relay.wake
        if self.consumer is not None:
            self.consumer.metrics = metrics
            await self.consumer.start()
        self.relay.start()
        log.info(
            "events started",
            service=self.service,
            bus=getattr(self.bus, "kind", "jetstream"),
            consumes=sorted(self.consumer.handlers) if self.consumer else [],
        )

    async def stop(self) -> None:
        """Stop relaying (giving the lease up) and consuming; what is in flight is delivered
        again later (at least once, the inbox removes repeats)."""
        self._started = False
        await self.relay.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.owns_bus:
            with contextlib.suppress(Exception):
                await self.bus.close()


def service_events(
    service: str,
    begin: TransactionFactory[TxT],
    outbox: Outbox,
    handlers: Mapping[str, Handler[TxT]],
    bus: EventBus | None = None,
) -> ServiceEvents[TxT]:
    """A service's relay and consumer, settings from ORDERFLOW_NATS_URL and
    ORDERFLOW_EVENTS_*. Without `bus` (one service in this process) it gets a bus of its
    own: JetStream when ORDERFLOW_NATS_URL is set, else an in-process one, on which its
    events reach only its own consumer (other processes never see them)."""
    settings = EventsSettings()
    owns_bus = bus is None
    if bus is None:
        bus = settings.create_bus()
        if isinstance(bus, InProcessBus):
            log.warning(
                "ORDERFLOW_NATS_URL is not set: this service's events stay in this process; "
                "set it so other services receive them",
                service=service,
            )
    return ServiceEvents(service, bus, begin, outbox, handlers, settings, owns_bus=owns_bus)
