"""A small HTTP server on 127.0.0.1 that speaks the Kubernetes API for the one kind of
object the autoscaler touches, so that the real `kubernetes` client makes real requests:

    GET   /apis/ray.io/v1/namespaces/NS/rayclusters/NAME
    PATCH /apis/ray.io/v1/namespaces/NS/rayclusters/NAME   application/merge-patch+json

A merge patch (RFC 7386) applied to the stored object; a metadata.resourceVersion in the
patch that is not the stored one is a 409 Conflict, as the API server's precondition;
every accepted change bumps the resourceVersion. `forbid_patch` answers 403 as an RBAC
refusal does; `conflicts` makes the next N patches lose a race (another writer changes the
object first). Errors come as the API server's `Status` objects.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/apis/ray.io/v1/namespaces/"


class FakeKube:
    def __init__(self, namespace: str, obj: dict[str, Any]) -> None:
        self.namespace = namespace
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = "1"
        self.forbid_patch = False
        self.conflicts = 0  # the next N patches find the object changed by someone else
        self.patches: list[dict[str, Any]] = []  # every patch received, accepted or not
        self.lock = threading.Lock()

    def path(self) -> str:
        return f"{PREFIX}{self.namespace}/rayclusters/{self.obj['metadata']['name']}"

    def bump(self) -> None:
        rv = self.obj["metadata"]["resourceVersion"]
        self.obj["metadata"]["resourceVersion"] = str(int(rv) + 1)

    def group(self, name: str) -> dict[str, Any]:
        (g,) = [g for g in self.obj["spec"]["workerGroupSpecs"] if g["groupName"] == name]
        return g


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(kube: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != kube.path():
                return self._send(404, _status(404, "NotFound", f"{self.path} not found"))
            with kube.lock:
                self._send(200, kube.obj)

        def do_PATCH(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            kind = self.headers.get("Content-Type", "")
            with kube.lock:
                kube.patches.append(copy.deepcopy(body))
                if self.path.split("?")[0] != kube.path():
                    return self._send(404, _status(404, "NotFound", f"{self.path} not found"))
                if kube.forbid_patch:
                    msg = 'rayclusters.ray.io is forbidden: cannot patch resource "rayclusters"'
                    return self._send(403, _status(403, "Forbidden", msg))
                if kind != "application/merge-patch+json":
                    return self._send(415, _status(415, "UnsupportedMediaType", kind))
                if kube.conflicts:
                    kube.conflicts -= 1
                    kube.bump()  # someone else wrote first
                rv = body.get("metadata", {}).get("resourceVersion")
                if rv is not None and rv != kube.obj["metadata"]["resourceVersion"]:
                    msg = "the object has been modified; please apply your changes to the latest"
                    return self._send(409, _status(409, "Conflict", msg))
                body.get("metadata", {}).pop("resourceVersion", None)
                kube.obj = _merge(kube.obj, body)
                kube.bump()
                self._send(200, kube.obj)

    return Handler


@contextmanager
def serve(kube: FakeKube) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(kube))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
