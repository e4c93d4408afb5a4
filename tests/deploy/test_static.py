"""Static checks of deploy/: Dockerfiles lint clean, compose files are valid and keep the
services internal, every Kubernetes manifest validates offline, and the NetworkPolicies let
only the gateway reach a gRPC port and only its own service reach a database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    EXTERNAL,
    IN_CI,
    K8S_TARGETS,
    ROOT,
    Cluster,
    load_compose,
    render,
    tool,
)

SERVICES = {"orders": 50051, "inventory": 50052, "loyalty": 50053}
DOCKERFILES = sorted((DEPLOY / "docker").glob("*Dockerfile"))
SECRET = "x" * 40


# --- Dockerfiles -----------------------------------------------------------------------


def test_there_are_dockerfiles() -> None:
    assert {p.name for p in DOCKERFILES} >= {
        "Dockerfile",
        "postgres.Dockerfile",
        "nats.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_run_as_non_root_from_a_base_image_argument() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    stages = text.split("\nFROM ")
    finals = {s.split(" AS ")[1].split()[0]: s for s in stages[1:] if " AS " in s.splitlines()[0]}
    for target in ("service", "gateway", "onebox"):
        assert target in finals, f"no target {target}"
        assert "USER 10001:10001" in finals[target], f"{target} would run as root"


# --- compose ---------------------------------------------------------------------------


def _compose_config(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        subprocess.run(["podman", "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        if IN_CI:
            pytest.fail("podman is required under CI=true (apt-get install podman)")
        pytest.skip("podman-compose needs podman")
    return subprocess.run(
        [tool("podman-compose"), "-f", str(DEPLOY / "compose" / name), "config"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        cwd=ROOT,
    )


@pytest.mark.parametrize("name", ["single.yaml", "multi.yaml"])
def test_compose_file_is_valid(name: str) -> None:
    done = _compose_config(name, {"ORDERFLOW_AUTH_JWT_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    assert "services:" in done.stdout


@pytest.mark.parametrize("name", ["single.yaml", "multi.yaml"])
def test_compose_refuses_to_start_without_a_token_key(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORDERFLOW_AUTH_JWT_SECRET"}
    env["ORDERFLOW_AUTH_JWT_SECRET"] = ""
    done = _compose_config(name, env)
    assert done.returncode != 0
    assert "ORDERFLOW_AUTH_JWT_SECRET" in done.stdout + done.stderr


def _services(name: str) -> dict[str, Any]:
    services: dict[str, Any] = load_compose(name)["services"]
    return services


def test_multi_publishes_only_the_gateway_and_keeps_the_rest_internal() -> None:
    compose = load_compose("multi.yaml")
    services = compose["services"]
    networks = compose["networks"]
    assert set(services) == {"postgres", "nats", "orders", "inventory", "loyalty", "gateway"}
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway"}
    # REST and the gateway's public gRPC API.
    assert [p.rsplit(":", 1)[1] for p in services["gateway"]["ports"]] == ["8080", "8081"]
    internal = {name for name, net in networks.items() if (net or {}).get("internal")}
    for name in ("orders", "inventory", "loyalty", "postgres", "nats"):
        joined = set(services[name]["networks"])
        assert joined <= internal, f"{name} is on a network that is not internal: {joined}"
    # The gateway talks to the services and reads the broker's order events (WatchOrder),
    # but does not reach the database.
    assert not set(services["gateway"]["networks"]) & set(services["postgres"]["networks"])
    assert set(services["gateway"]["networks"]) & set(services["nats"]["networks"])
    assert services["gateway"]["environment"]["ORDERFLOW_NATS_URL"] == "nats://nats:4222"


def test_multi_has_a_jetstream_broker_with_a_volume_for_every_service() -> None:
    compose = load_compose("multi.yaml")
    services = compose["services"]
    nats = services["nats"]
    assert nats["build"]["dockerfile"] == "deploy/docker/nats.Dockerfile"
    assert not nats.get("ports")
    # JetStream's store is a named volume (the image's config keeps it under /data).
    volumes = dict(reversed(v.split(":")[:2]) for v in nats["volumes"])
    assert volumes["/data"] in compose["volumes"]
    config = (DEPLOY / "docker" / "nats.conf").read_text()
    assert "jetstream" in config and "store_dir: /data" in config
    for name in SERVICES:
        svc = services[name]
        assert svc["environment"]["ORDERFLOW_NATS_URL"] == "nats://nats:4222"
        assert set(svc["networks"]) & set(nats["networks"]), f"{name} cannot reach nats"
        assert "nats" in svc["depends_on"]
    # Nothing but the three services and the gateway shares a network with the broker.
    sharing = {
        name
        for name, svc in services.items()
        if name != "nats" and set(svc["networks"]) & set(nats["networks"])
    }
    assert sharing == {*SERVICES, "gateway"}


def test_nats_image_serves_jetstream_as_non_root() -> None:
    text = (DEPLOY / "docker" / "nats.Dockerfile").read_text()
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in text
    assert "nats-server" in text and "USER 10001:10001" in text
    assert 'VOLUME ["/data"]' in text
    # The config the image carries is one the server accepts.
    server = "/usr/sbin/nats-server"
    if not Path(server).exists():
        if IN_CI:
            pytest.fail(f"{server} is required under CI=true")
        pytest.skip(f"{server} not installed")
    done = subprocess.run(
        [server, "-c", str(DEPLOY / "docker" / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "is valid" in done.stdout + done.stderr, done.stderr


def test_multi_has_health_checks_and_waits_for_healthy_dependencies() -> None:
    services = _services("multi.yaml")
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, port in SERVICES.items():
        check = services[name]["healthcheck"]["test"]
        assert check[-2:] == ["grpc", f"127.0.0.1:{port}"]
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["command"] == ["serve", name]
        url = services[name]["environment"][f"ORDERFLOW_{name.upper()}_DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and url.endswith(f"@postgres:5432/{name}")
    gateway = services["gateway"]
    assert {n: d["condition"] for n, d in gateway["depends_on"].items()} == dict.fromkeys(
        SERVICES, "service_healthy"
    )
    for name, port in SERVICES.items():
        target = gateway["environment"][f"ORDERFLOW_GATEWAY_{name.upper()}_TARGET"]
        assert target == f"dns:///{name}:{port}"
    assert "ORDERFLOW_AUTH_JWT_SECRET" in gateway["environment"]


def test_single_publishes_http_and_grpc() -> None:
    (svc,) = _services("single.yaml").values()
    assert sorted(p.rsplit(":", 1)[1] for p in svc["ports"]) == ["50051", "8080", "8081"]
    assert svc["command"][:1] == ["run"] and "0.0.0.0" in svc["command"]
    assert "ORDERFLOW_AUTH_JWT_SECRET" in svc["environment"]


# --- Kubernetes ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(K8S_TARGETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_manifests_validate_offline(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    import yaml

    target, docs = rendered
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.32.0", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{target}:\n{done.stdout}{done.stderr}"


def _kinds(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    return kinds


def test_every_component_has_what_it_needs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    kinds = _kinds(docs)
    components = {*SERVICES, "gateway"}
    assert components <= kinds["Deployment"]
    assert components <= kinds["Service"]
    assert components <= kinds["HorizontalPodAutoscaler"]
    assert components <= kinds["PodDisruptionBudget"]
    assert {f"{s}-migrate" for s in SERVICES} <= kinds["Job"]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for name, port in SERVICES.items():
        service = by_name[("Service", name)]["spec"]
        assert service["clusterIP"] == "None", f"{name}: gRPC needs a headless Service"
        assert [p["port"] for p in service["ports"]] == [port]
        (container,) = by_name[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", name, "--no-migrate"]
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert container["startupProbe"]["grpc"]["port"] == port
        (job,) = by_name[("Job", f"{name}-migrate")]["spec"]["template"]["spec"]["containers"]
        assert job["args"] == ["migrate", name]
    (gateway,) = by_name[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in gateway["env"]}
    for name, port in SERVICES.items():
        assert env[f"ORDERFLOW_GATEWAY_{name.upper()}_TARGET"]["value"] == f"dns:///{name}:{port}"
    assert env["ORDERFLOW_AUTH_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"]


def test_pods_are_hardened(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        template = (doc.get("spec") or {}).get("template")
        if not template:
            continue
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["automountServiceAccountToken"] is False, what
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), what
            assert {"cpu", "memory"} <= set(resources["limits"]), what


# --- NetworkPolicies -------------------------------------------------------------------


def test_default_deny_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    denies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"].get("podSelector") in ({}, None)
        and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not d["spec"].get("ingress")
        and not d["spec"].get("egress")
    ]
    assert denies, "no default-deny NetworkPolicy (all pods, Ingress and Egress, no rules)"


def test_only_the_gateway_reaches_a_grpc_port(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    cluster = Cluster.from_manifests(docs)
    gateway = cluster.pod("Deployment/gateway")
    for name, port in SERVICES.items():
        service = cluster.pod(f"Deployment/{name}")
        assert service.ports["grpc"] == port
        assert cluster.who_can_reach(service, port) == {"Deployment/gateway"}, name
        # Not only because every other pod's egress is closed: the service's own ingress.
        assert cluster.admitted_by(service, port) == {"Deployment/gateway"}, name
        assert cluster.can_connect(gateway, service, port)
    # And nothing else of theirs is open: the gateway reaches no other port of a service.
    for name in SERVICES:
        assert not cluster.can_connect(gateway, cluster.pod(f"Deployment/{name}"), 5432)


def test_only_the_services_and_the_gateway_reach_the_broker(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    nats = by_name[("StatefulSet", "nats")]["spec"]
    (claim,) = nats["volumeClaimTemplates"]
    (container,) = nats["template"]["spec"]["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[
        claim["metadata"]["name"]
    ] == "/data"
    assert [p["port"] for p in by_name[("Service", "nats")]["spec"]["ports"]] == [4222]
    for name in SERVICES:
        (service,) = by_name[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in service["env"]}
        assert env["ORDERFLOW_NATS_URL"] == "nats://nats:4222", name
    cluster = Cluster.from_manifests(docs)
    broker = cluster.pod("StatefulSet/nats")
    servers = {f"Deployment/{name}" for name in SERVICES} | {"Deployment/gateway"}
    assert cluster.who_can_reach(broker, 4222) == servers
    assert cluster.admitted_by(broker, 4222) == servers
    assert not cluster.can_connect(None, broker, 4222)
    # The broker itself opens no connection (no egress rule besides DNS).
    for name in SERVICES:
        assert not cluster.egress_allows(broker, cluster.pod(f"Deployment/{name}"), 50051)


def test_the_gateway_is_reachable_from_outside(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    cluster = Cluster.from_manifests(docs)
    gateway = cluster.pod("Deployment/gateway")
    assert EXTERNAL in cluster.who_can_reach(gateway, 8080)
    assert EXTERNAL in cluster.who_can_reach(gateway, 8081)  # its public gRPC API
    assert gateway.ports["grpc"] == 8081
    assert not cluster.can_connect(gateway, gateway, 5432)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ports = {p["name"]: p for p in by_name[("Service", "gateway")]["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["grpc"]["appProtocol"]) == (8081, "grpc")


def test_only_its_own_service_reaches_a_database() -> None:
    cluster = Cluster.from_manifests(render("postgres"))
    databases = [
        p for p in cluster.pods if p.labels.get("app.kubernetes.io/component") == "database"
    ]
    assert {p.name for p in databases} == {f"StatefulSet/postgres-{s}" for s in SERVICES}
    for name in SERVICES:
        database = cluster.pod(f"StatefulSet/postgres-{name}")
        port = database.ports["postgres"]
        own = {f"Deployment/{name}", f"Job/{name}-migrate"}
        assert cluster.who_can_reach(database, port) == own, name
        assert cluster.admitted_by(database, port) == own, name
        for other in databases:
            if other is not database:
                assert not cluster.can_connect(cluster.pod(f"Deployment/{name}"), other, port)


def test_services_reach_no_database_port_but_5432_in_the_base() -> None:
    cluster = Cluster.from_manifests(render("base"))
    for name in SERVICES:
        service = cluster.pod(f"Deployment/{name}")
        assert cluster.egress_allows(service, None, 5432)
        assert not cluster.egress_allows(service, None, 443)
        assert not cluster.egress_allows(service, None, 5433)


def test_the_model_sees_an_open_policy() -> None:
    """The reachability model itself: an allow-all policy must show as open."""
    docs = render("base")
    opened = [*docs]
    opened.append(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "oops"},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "orders"}},
                "policyTypes": ["Ingress"],
                "ingress": [{}],
            },
        }
    )
    cluster = Cluster.from_manifests(opened)
    reach = cluster.who_can_reach(cluster.pod("Deployment/orders"), 50051)
    assert EXTERNAL in reach and "Deployment/inventory" not in reach  # inventory egress: 5432
