"""What the deployment tests read: the repository's deploy/ files, rendered and modelled.

`Cluster` models the pods that the rendered Kubernetes manifests would run and answers
which pod may open a connection to which port of which other pod under their
NetworkPolicies, with the semantics of the API: a pod selected by no policy of a
direction is open in that direction; once selected, only what some rule of a policy
selecting it allows is allowed; a connection needs the source's egress and the
destination's ingress to allow it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_TARGETS = {
    "base": DEPLOY / "k8s" / "base",
    "postgres": DEPLOY / "k8s" / "overlays" / "postgres",
}
IN_CI = os.environ.get("CI", "").lower() == "true"
EXTERNAL = "(outside the namespace)"


def tool(name: str) -> str:
    """A command from the project's virtualenv (next to this Python) or from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is required under CI=true (pip install -e '.[dev]' or apt)")
        pytest.skip(f"{name} is not installed")
    return found


def render(target: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S_TARGETS[target])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Label-selector semantics (matchLabels and matchExpressions); {} selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class Pod:
    """The pods of one workload (Deployment, StatefulSet, Job...)."""

    name: str  # kind/name
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # port name -> number


@dataclass
class Cluster:
    pods: list[Pod]
    policies: list[dict[str, Any]]

    @classmethod
    def from_manifests(cls, docs: list[dict[str, Any]]) -> Cluster:
        pods = []
        for doc in docs:
            spec = doc.get("spec") or {}
            template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get(
                "template"
            )
            if not template:
                continue
            pod_spec = template["spec"]
            ports = {
                p.get("name", str(p["containerPort"])): p["containerPort"]
                for c in pod_spec.get("containers", [])
                for p in c.get("ports", [])
            }
            labels = template.get("metadata", {}).get("labels", {})
            pods.append(Pod(f"{doc['kind']}/{doc['metadata']['name']}", labels, ports))
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        return cls(pods, policies)

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def _selecting(self, pod: Pod, direction: str) -> list[dict[str, Any]]:
        chosen = []
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (
                ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
            )
            if direction in types and matches(spec.get("podSelector"), pod.labels):
                chosen.append(spec)
        return chosen

    @staticmethod
    def _port_ok(rule: dict[str, Any], dest: Pod | None, port: int) -> bool:
        rule_ports = rule.get("ports")
        if not rule_ports:
            return True
        for entry in rule_ports:
            if entry.get("protocol", "TCP") != "TCP":
                continue
            wanted = entry.get("port")
            if wanted is None:
                return True
            if isinstance(wanted, str):
                wanted = dest.ports.get(wanted) if dest else None
            end = entry.get("endPort", wanted)
            if wanted is not None and wanted <= port <= end:
                return True
        return False

    @staticmethod
    def _peer_ok(peers: list[dict[str, Any]] | None, other: Pod | None) -> bool:
        """Does a rule's from/to list admit `other` (None: anything outside the namespace)?"""
        if peers is None or peers == []:
            return True  # no from/to: every source or destination
        for peer in peers:
            if "ipBlock" in peer:
                if other is None:
                    return True
                continue
            if "namespaceSelector" in peer:
                # Some namespace's pods: outside this one for certain; this one's too when the
                # selector is empty or the pod selector admits the pod.
                if other is None:
                    return True
                if peer["namespaceSelector"] == {} and matches(
                    peer.get("podSelector"), other.labels
                ):
                    return True
                continue
            if other is not None and matches(peer.get("podSelector"), other.labels):
                return True
        return False

    def ingress_allows(self, source: Pod | None, dest: Pod, port: int) -> bool:
        specs = self._selecting(dest, "Ingress")
        if not specs:
            return True
        return any(
            self._peer_ok(rule.get("from"), source) and self._port_ok(rule, dest, port)
            for spec in specs
            for rule in spec.get("ingress") or []
        )

    def egress_allows(self, source: Pod, dest: Pod | None, port: int) -> bool:
        specs = self._selecting(source, "Egress")
        if not specs:
            return True
        return any(
            self._peer_ok(rule.get("to"), dest) and self._port_ok(rule, dest, port)
            for spec in specs
            for rule in spec.get("egress") or []
        )

    def can_connect(self, source: Pod | None, dest: Pod, port: int) -> bool:
        """source None: a client outside the namespace (its own egress is not ours)."""
        if source is not None and not self.egress_allows(source, dest, port):
            return False
        return self.ingress_allows(source, dest, port)

    def admitted_by(self, dest: Pod, port: int) -> set[str]:
        """Who dest's ingress alone lets in (whatever their own egress says)."""
        allowed = {p.name for p in self.pods if self.ingress_allows(p, dest, port)}
        if self.ingress_allows(None, dest, port):
            allowed.add(EXTERNAL)
        return allowed

    def who_can_reach(self, dest: Pod, port: int) -> set[str]:
        # Replicas of dest count too: one pod of a workload reaching another is a connection.
        allowed = {p.name for p in self.pods if self.can_connect(p, dest, port)}
        if self.can_connect(None, dest, port):
            allowed.add(EXTERNAL)
        return allowed


def load_compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / name).read_text())
