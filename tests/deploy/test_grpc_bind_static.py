"""The deploy files start every gRPC server it would refuse to start otherwise: a service
bound beyond loopback says explicitly that it may (ORDERFLOW_INSECURE_GRPC) or has TLS."""

from __future__ import annotations

from typing import Any

import pytest

from orderflow.platform.grpc_bind import ExposedGrpcError, check_grpc_bind
from tests.deploy.manifests import K8S_TARGETS, load_compose, render

SERVICES = ("orders", "inventory", "loyalty")
# deploy/docker/Dockerfile, target service: ORDERFLOW_<SERVICE>_HOST=0.0.0.0
IMAGE_HOST = "0.0.0.0"


def _starts(env: dict[str, str], service: str, args: list[str]) -> str | None:
    """What the guard says about this container: None, a warning, or ExposedGrpcError."""
    host = env.get(f"ORDERFLOW_{service.upper()}_HOST", IMAGE_HOST)
    tls = all(env.get(f"ORDERFLOW_TLS_{f}_FILE") for f in ("CA", "CERT", "KEY"))
    insecure = env.get("ORDERFLOW_INSECURE_GRPC", "").lower() == "true"
    return check_grpc_bind(host, tls=tls, insecure=insecure or "--insecure-grpc" in args)


@pytest.mark.parametrize("service", SERVICES)
def test_compose_services_say_how_they_may_listen(service: str) -> None:
    svc = load_compose("multi.yaml")["services"][service]
    env = {k: str(v) for k, v in svc["environment"].items()}
    assert _starts(env, service, svc["command"]) is not None  # allowed, and announced


def test_the_guard_would_refuse_them_without_it() -> None:
    with pytest.raises(ExposedGrpcError):
        _starts({}, "orders", ["serve", "orders"])


def test_single_container_exposes_grpc_only_as_told() -> None:
    (svc,) = load_compose("single.yaml")["services"].values()
    command: list[str] = svc["command"]
    grpc_host = command[command.index("--grpc-host") + 1] if "--grpc-host" in command else ""
    check_grpc_bind(grpc_host or "127.0.0.1", tls=False, insecure="--insecure-grpc" in command)
    # The published gRPC port stays on the host's loopback by default.
    grpc_ports = [p for p in svc["ports"] if p.endswith(":50051")]
    assert grpc_ports and all("127.0.0.1:50051" in p for p in grpc_ports)


@pytest.mark.parametrize("target", sorted(K8S_TARGETS))
def test_k8s_services_say_how_they_may_listen(target: str) -> None:
    docs: list[dict[str, Any]] = render(target)
    seen = set()
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] != "Deployment" or name not in SERVICES:
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        assert _starts(env, name, container["args"]) is not None
        seen.add(name)
    assert seen == set(SERVICES)
