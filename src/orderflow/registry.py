"""Every component orderflow can run, in one table: its name, its settings class, its build.

`orderflow serve`, `orderflow run`, `orderflow migrate`, and the tests that start services
all read `SERVICES` (the three gRPC services) and `COMPONENT_NAMES` (those and the gateway)
from here, so a service is added or renamed in one place.

Nothing heavy is imported by this module: a settings class and a build function are looked
up when first asked for, so a process serving inventory imports inventory's code and no
other service's (and neither the command-line toolkit nor alembic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from orderflow.events.bus import EventBus
    from orderflow.platform.component import Component
    from orderflow.settings import (
        CommonSettings,
        InventorySettings,
        LoyaltySettings,
        OrdersSettings,
        ServiceSettings,
    )

S = TypeVar("S", bound="ServiceSettings")
S_contra = TypeVar("S_contra", bound="ServiceSettings", contravariant=True)


class Build(Protocol[S_contra]):
    """`build()` of a service's bootstrap module: the service on its own database."""

    async def __call__(
        self,
        settings: S_contra,
        common: CommonSettings,
        *,
        migrate: bool = True,
        bus: EventBus | None = None,
    ) -> Component: ...


@dataclass(frozen=True)
class ServiceDef(Generic[S]):
    """One gRPC service: its name (also its package and its ORDERFLOW_<NAME>_ prefix)."""

    name: str
    _settings_cls: Callable[[], type[S]]
    _build: Callable[[], Build[S]]

    @property
    def settings_cls(self) -> type[S]:
        """The settings class, read from ORDERFLOW_<NAME>_* when instantiated."""
        return self._settings_cls()

    async def build(
        self,
        settings: S,
        common: CommonSettings,
        *,
        migrate: bool = True,
        bus: EventBus | None = None,
    ) -> Component:
        """Build (and by default migrate) the service from its settings; its events go
        through bus (one shared by the services of a process) or a bus of its own."""
        return await self._build()(settings, common, migrate=migrate, bus=bus)


# Each pair below is checked by mypy against the class and function it names.


def _orders_settings() -> type[OrdersSettings]:
    from orderflow.settings import OrdersSettings

    return OrdersSettings


def _orders_build() -> Build[OrdersSettings]:
    from orderflow.orders.bootstrap import build

    return build


def _inventory_settings() -> type[InventorySettings]:
    from orderflow.settings import InventorySettings

    return InventorySettings


def _inventory_build() -> Build[InventorySettings]:
    from orderflow.inventory.bootstrap import build

    return build


def _loyalty_settings() -> type[LoyaltySettings]:
    from orderflow.settings import LoyaltySettings

    return LoyaltySettings


def _loyalty_build() -> Build[LoyaltySettings]:
    from orderflow.loyalty.bootstrap import build

    return build


SERVICES: tuple[ServiceDef[Any], ...] = (
    ServiceDef("orders", _orders_settings, _orders_build),
    ServiceDef("inventory", _inventory_settings, _inventory_build),
    ServiceDef("loyalty", _loyalty_settings, _loyalty_build),
)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
GATEWAY = "gateway"
# What `orderflow serve` can run: each service, or the gateway.
COMPONENT_NAMES: tuple[str, ...] = (*SERVICE_NAMES, GATEWAY)


def service(name: str) -> ServiceDef[Any]:
    """The service called name; KeyError names the known ones."""
    for found in SERVICES:
        if found.name == name:
            return found
    raise KeyError(f"no service {name!r}; the services are {', '.join(SERVICE_NAMES)}")
