"""A small evaluator of Kubernetes NetworkPolicies: may this source open a connection to
this destination on this port?

The rules (networking.k8s.io/v1):
- a pod is isolated for ingress (egress) when some policy in its namespace selects it and
  lists Ingress (Egress) in policyTypes; an isolated pod admits only what some rule of such
  a policy admits, a pod that is not isolated admits everything;
- a connection needs both: the source's egress and the destination's ingress;
- a peer is a podSelector (pods of the policy's namespace), a namespaceSelector (every pod
  of the namespaces it selects), both (the pods it selects in those namespaces), or an
  ipBlock; a rule without peers admits every peer, a rule without ports every port.

An ipBlock is matched against pods' addresses too: some network plugins do so, and an
evaluator that did not would call allowed what such a cluster refuses or the reverse; here
an ipBlock can only admit more, so the tests' "denied" checks stay on the safe side.
Named ports are refused: the chart uses numbers. Policies must carry their namespace
(`in_namespace` gives a render's policies the one Helm would install them in).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.helm.manifests import selects

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    labels: Mapping[str, str]
    namespace: str
    ip: str
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def ns_labels(self) -> Mapping[str, str]:
        # Kubernetes labels every namespace with its name.
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


@dataclass(frozen=True)
class Outside:
    """An address that is no pod: a client on the internet, the API server, a managed Redis."""

    ip: str


Endpoint = Pod | Outside


def _in_block(ip: str, block: Obj) -> bool:
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))


def _peer_matches(peer: Obj, other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return _in_block(other.ip, peer["ipBlock"])
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.ns_labels()):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(rule_ports: Iterable[Obj] | None, port: int, protocol: str) -> bool:
    ports = list(rule_ports or [])
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if not isinstance(p["port"], int):
            raise ValueError(f"named port {p['port']!r}: the evaluator reads numbers only")
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _admits(
    policies: list[Obj], pod: Endpoint, other: Endpoint, port: int, protocol: str, way: str
) -> bool:
    """Whether `pod`'s policies of type `way` (Ingress: `other` is the source; Egress: the
    destination) admit the connection."""
    if not isinstance(pod, Pod):
        return True  # nothing outside the cluster is isolated by these policies
    mine = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
        and way in _types(p)
    ]
    if not mine:
        return True
    peers_key = "from" if way == "Ingress" else "to"
    for policy in mine:
        ns = policy["metadata"]["namespace"]
        for rule in policy["spec"].get(way.lower()) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, other, ns) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: list[Obj], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    return _admits(policies, src, dst, port, protocol, "Egress") and _admits(
        policies, dst, src, port, protocol, "Ingress"
    )


def in_namespace(policies: Iterable[Obj], namespace: str) -> list[Obj]:
    return [{**p, "metadata": {**p["metadata"], "namespace": namespace}} for p in policies]
