"""The autoscaler's hands on Kubernetes: the replicas of the prefill and decode worker
groups of a KubeRay `RayCluster`, through the official `kubernetes` client.

    GET   .../rayclusters/NAME                  each group's replicas: the pool sizes
    PATCH .../rayclusters/NAME  (merge patch)   metadata.resourceVersion  (a precondition)
                                                spec.workerGroupSpecs     (the whole list)

The patch carries the resourceVersion it was computed from, so a change made meanwhile
(by hand, by KubeRay, by another autoscaler) is not overwritten: the API server answers
409, and the actuator reads again and retries (a few times, then gives up until the next
tick). A merge patch replaces a list whole, so the groups not ours go back as they were.

Scaling a group down names its victim in `scaleStrategy.workersToDelete`, so that the pod
KubeRay deletes is the one chosen (fewest requests in flight, from the registry) and not
one at random. Its `tandem worker` gets SIGTERM and drains: out of the registry at once,
its streams finished (or resumed elsewhere) within `--drain-timeout-s`, which the pod's
terminationGracePeriodSeconds must cover. Worker ids are pod names (the chart passes
`--worker-id=$(POD_NAME)`). A 403 (the chart's RBAC does not grant `patch` on rayclusters)
is logged with what to grant, and nothing changes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from services.autoscaler.signals import in_flight
from services.pb.events_pb2 import WorkerRecord

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
CONFLICT_RETRIES = 3
log = logging.getLogger(__name__)


class KubeRayActuator:
    def __init__(
        self,
        api: Any,  # kubernetes.client.CustomObjectsApi
        namespace: str,
        cluster: str,
        groups: Mapping[str, str],  # pool -> worker group name
        read_records: Callable[[], list[WorkerRecord]],
    ) -> None:
        self.api, self.namespace, self.cluster = api, namespace, cluster
        self.groups = dict(groups)
        self._read = read_records

    def replicas(self) -> dict[str, int]:
        specs = self._get()["spec"]["workerGroupSpecs"]
        by_name = {g["groupName"]: g for g in specs}
        return {pool: int(by_name[name].get("replicas", 0)) for pool, name in self.groups.items()}

    def scale(self, pool: str, replicas: int) -> None:
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, CONFLICT_RETRIES + 1):
            obj = self._get()
            patch = self._patch(obj, self.groups[pool], pool, replicas)
            try:
                self.api.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.cluster, patch
                )
                return
            except ApiException as e:
                if e.status == 409 and attempt < CONFLICT_RETRIES:
                    log.info(
                        "autoscaler: %s changed meanwhile (409): reading it again", self.cluster
                    )
                    continue
                if e.status == 403:
                    log.error(
                        "autoscaler: not allowed to patch rayclusters/%s in %s (403): grant "
                        "get and patch on rayclusters.ray.io to the autoscaler's service account",
                        self.cluster,
                        self.namespace,
                    )
                raise

    def _get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.cluster
        )
        return obj

    def _patch(self, obj: dict[str, Any], group: str, pool: str, replicas: int) -> dict[str, Any]:
        specs = copy.deepcopy(obj["spec"]["workerGroupSpecs"])
        (spec,) = [g for g in specs if g["groupName"] == group]
        current = int(spec.get("replicas", 0))
        spec["replicas"] = replicas
        if replicas < current:
            victims = self._victims(pool, current - replicas)
            strategy = spec.setdefault("scaleStrategy", {})
            strategy["workersToDelete"] = sorted(
                set(strategy.get("workersToDelete") or []) | set(victims)
            )
        rv = obj["metadata"]["resourceVersion"]
        return {"metadata": {"resourceVersion": rv}, "spec": {"workerGroupSpecs": specs}}

    def _victims(self, pool: str, n: int) -> list[str]:
        """The pods of the `n` workers of `pool` least in flight (signals.in_flight)."""
        records = [r for r in self._read() if r.role == pool]
        records.sort(key=lambda r: (in_flight(r), r.worker_id))
        return [r.worker_id for r in records[:n]]
