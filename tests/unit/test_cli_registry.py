"""The registry of components: one table that serving, one-process mode and tests read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orderflow import boot, registry
from orderflow.inventory import bootstrap as inventory_bootstrap
from orderflow.loyalty import bootstrap as loyalty_bootstrap
from orderflow.orders import bootstrap as orders_bootstrap


def test_every_service_names_its_settings_and_its_build() -> None:
    builds: dict[str, object] = {
        "orders": orders_bootstrap.build,
        "inventory": inventory_bootstrap.build,
        "loyalty": loyalty_bootstrap.build,
    }
    assert tuple(builds) == registry.SERVICE_NAMES
    for definition in registry.SERVICES:
        prefix = definition.settings_cls.model_config.get("env_prefix")
        assert prefix == f"ORDERFLOW_{definition.name.upper()}_"
        assert definition._build() is builds[definition.name]
    assert (*registry.SERVICE_NAMES, "gateway") == registry.COMPONENT_NAMES


def test_an_unknown_service_is_refused_with_the_known_names() -> None:
    with pytest.raises(KeyError, match="orders, inventory, loyalty"):
        registry.service("shipping")


def test_serve_parser_offers_exactly_the_registered_components() -> None:
    for name in registry.COMPONENT_NAMES:
        assert boot.serve_parser().parse_args([name]).component == name
    assert boot.serve_parser().parse_args(["orders", "--no-migrate"]).migrate is False
    with pytest.raises(SystemExit) as exit_info:
        boot.serve_parser().parse_args(["shipping"])
    assert exit_info.value.code == 2


def test_a_served_service_loads_no_other_service_nor_the_cli_toolkit() -> None:
    # What `orderflow serve inventory` loads before it serves: its arguments, its settings
    # class and its build function, all through the registry.
    probe = (
        "import json, sys\n"
        "from orderflow import boot, registry\n"
        "args = boot.serve_parser().parse_args(['inventory'])\n"
        "definition = registry.service(args.component)\n"
        "definition.settings_cls\n"
        "definition._build()\n"
        "import orderflow.platform.component, orderflow.platform.migrations\n"
        "import orderflow.events.settings\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    assert "orderflow.inventory.bootstrap" in loaded
    unwanted: tuple[str, ...] = ("orderflow.orders", "orderflow.loyalty", "orderflow.gateway")
    unwanted += ("orderflow.cli", "typer", "click", "alembic")
    # Nor what a service never uses at rest: SQLAlchemy's ORM (Core only), OpenTelemetry
    # (tracing is off), the NATS client (ORDERFLOW_NATS_URL is not set).
    unwanted += ("sqlalchemy.orm", "opentelemetry", "nats")
    assert not {m for m in loaded if m.startswith(unwanted)}
