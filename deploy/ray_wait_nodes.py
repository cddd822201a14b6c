"""Wait until a `ray up` cluster has all its nodes: the head and every `provider.worker_ips`
entry of the config `ray up` copied to the head (~/ray_bootstrap_config.yaml).

deploy/ray-cluster.yaml runs this on the head before `tandem serve`, which sizes its pools
from the cluster's resources when it starts (a GPU per worker only when there are enough):
started before the GPU nodes joined, it would put its workers on CPUs.

    python deploy/ray_wait_nodes.py [CONFIG] [--timeout-s 900]

Exits 0 once every node is alive, 1 at the timeout, saying how many joined. It joins the
Ray running on this node; RAY_AUTH_MODE=token (set by the config) comes from the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def expected_nodes(config: dict[str, Any]) -> int:
    """The head plus the configured workers."""
    return 1 + len(config.get("provider", {}).get("worker_ips") or [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default="~/ray_bootstrap_config.yaml")
    ap.add_argument("--timeout-s", type=float, default=900.0)
    args = ap.parse_args(argv)
    want = expected_nodes(yaml.safe_load(Path(args.config).expanduser().read_text()))

    import ray

    ray.init(address="auto", logging_level=logging.ERROR, log_to_driver=False)
    deadline = time.monotonic() + args.timeout_s
    try:
        while (have := sum(1 for n in ray.nodes() if n.get("Alive"))) < want:
            if time.monotonic() > deadline:
                print(
                    f"only {have} of {want} Ray nodes joined in {args.timeout_s:g} s: "
                    "see `ray status` here, `ray monitor deploy/ray-cluster.yaml` there",
                    file=sys.stderr,
                )
                return 1
            print(f"{have} of {want} Ray nodes alive; waiting", flush=True)
            time.sleep(5)
    finally:
        ray.shutdown()
    print(f"all {want} Ray nodes alive", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
