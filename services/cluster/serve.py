"""`tandem serve`: a whole local cluster in one command.

    Ray (local, or RAY_ADDRESS) ── actors prefill-0.., decode-0.. (or both-0.. colocated)
    Redis (ours on a free 127.0.0.1 port, with a password; or --redis-url) ── registry
    router (this process) on --host:--port ── OpenAI API, /metrics, /health, /ready

Ctrl-C stops what this command started, in reverse order, and nothing else. Secrets (the
Redis password, the cluster token) are never printed: the banner masks the Redis URL.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import replace

from services.autoscaler.cli import add_autoscale_args, autoscaler_config, run_every
from services.autoscaler.loop import Autoscaler, AutoscalerConfig
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.ray_actuator import RayActuator
from services.cluster import redis_client
from services.cluster.arrivals import Arrivals
from services.cluster.cluster_config import ClusterConfig
from services.cluster.cluster_token import new_token, token_from_env
from services.cluster.held_requests import HeldRequests
from services.cluster.pools import NAMESPACE, Pools, PoolSpec, assign_cores, placement
from services.cluster.ray_auth import require_token_auth
from services.cluster.redis_server import RedisServer
from services.cluster.redis_url import redact_url, redis_password_from_env, redis_url_from_env
from services.cluster.registry import Registry
from services.cluster.worker_tls import server_tls_from_env
from services.router.dispatch_config import DEFAULT_HOLD_AT_ZERO_S
from services.router.listener import bind_listener
from services.router.options import add_router_args, router_options
from services.router.server import run_on_uvloop, run_router
from services.worker.engine_flags import add_engine_args, engine_config
from services.worker.process import WorkerNetConfig

log = logging.getLogger("tandem.serve")


class Cluster:
    """Ray + Redis + worker pools. A context manager: leaving it stops all it started."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._stack = contextlib.ExitStack()
        self.redis_url = ""
        self.dashboard_url: str | None = None
        self.ray_address = ""
        self.pools: Pools | None = None
        self.specs: list[PoolSpec] = []
        self.cores: dict[str, tuple[int, ...]] = {}
        self.started_s: dict[str, float] = {}  # phase -> seconds it took

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        import ray

        t0 = time.monotonic()
        cfg = self.config
        if cfg.redis_url:
            self.redis_url = cfg.redis_url
        else:
            server = self._stack.enter_context(RedisServer(password=cfg.redis_password))
            self.redis_url = server.url
        address = os.environ.get("RAY_ADDRESS") or None
        require_token_auth(starting_ray=address is None)
        ctx = ray.init(
            address=address,
            namespace=NAMESPACE,
            include_dashboard=cfg.dashboard if address is None else None,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
        )
        self._stack.callback(ray.shutdown)
        self.dashboard_url = getattr(ctx, "dashboard_url", None) or None
        self.ray_address = ray.get_runtime_context().gcs_address
        resources = ray.cluster_resources()
        self.specs = cfg.specs(resources.get("CPU", 1.0), resources.get("GPU", 0.0))
        # Only a cluster of our own is one node whose core ids we know: pin there.
        if address is None and self.specs[0].num_gpus == 0:
            self.cores = assign_cores(self.specs, sorted(os.sched_getaffinity(0)))
        for line in placement(
            self.specs, self.cores
        ):  # before the wait: a slow start shows what it waits for
            log.info("placement: %s", line)
        net = WorkerNetConfig(
            redis_url=self.redis_url,
            cluster_token=cfg.cluster_token,
            tls=server_tls_from_env(),
            metrics_port=0,  # each its own /metrics, listed by the router's /metrics/workers
        )
        # Joined a Ray cluster (RAY_ADDRESS): it may span nodes, so workers register an
        # address other nodes can dial; one of our own is this host alone.
        pools = Pools(
            cfg.engine, net, node_address=address is not None, served_name=cfg.served_name
        )
        self._stack.callback(pools.stop)
        self.pools = pools
        t1 = time.monotonic()
        pools.start(self.specs, self.cores)
        self.started_s = {"ray_redis": t1 - t0, "workers": time.monotonic() - t1}

    def banner(self) -> list[str]:
        """What `tandem serve` prints under the API address once it is up."""
        shown = redact_url(self.redis_url)  # the password stays out of every banner
        lines = [f"Ray address:    {self.ray_address}", f"Redis:          {shown}"]
        if self.dashboard_url:
            url = self.dashboard_url.removeprefix("http://")
            lines.insert(0, f"Ray dashboard:  http://{url}")
        lines += [f"Workers:        {line}" for line in placement(self.specs, self.cores)]
        lines.append("Metrics:        /metrics (the router's), /metrics/workers (the workers')")
        if self.started_s:  # start-up, printed so that a slower one is seen
            s = self.started_s
            lines.append(
                f"Started in:     {s['ray_redis'] + s['workers']:.1f} s (Ray and Redis "
                f"{s['ray_redis']:.1f} s, workers loaded and warmed {s['workers']:.1f} s)"
            )
        return lines

    def autoscale(self, config: AutoscalerConfig, drain_s: float) -> AutoscalerMetrics:
        """Start the autoscaler on this cluster's pools; it stops with the cluster."""
        assert self.pools is not None
        registry = self.registry()
        specs = {s.role: replace(s, replicas=1) for s in self.specs}
        actuator = RayActuator(self.pools, specs, registry.workers, drain_s)
        redis = redis_client.connect(self.redis_url)
        held, arrivals = HeldRequests(redis), Arrivals(redis)
        scaler = Autoscaler(
            config, registry.workers, actuator, read_held=held.total, read_arrivals=arrivals.read
        )
        stop = threading.Event()
        thread = run_every(scaler, stop)

        def stop_scaling() -> None:  # before the pools stop: callbacks run last-in first
            stop.set()
            thread.join(timeout=60)

        self._stack.callback(stop_scaling)
        bounds = ", ".join(f"{p} {b.min}..{b.max}" for p, b in config.bounds.items())
        log.info("autoscaler: on, %s", bounds)
        return scaler.metrics

    def registry(self) -> Registry:
        token = self.config.cluster_token
        return Registry(redis_client.connect(self.redis_url), token=token)


def add_serve_args(ap: argparse.ArgumentParser) -> None:
    add_router_args(ap)  # --host, --port, --api-key, --mode, --routing, --local-prefill-tokens
    ap.add_argument("--model", default=None, help="HF directory or .gguf (default: SmolLM2)")
    ap.add_argument("--prefill-workers", type=int, default=1)
    ap.add_argument("--decode-workers", type=int, default=1)
    ap.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting one (default: $TANDEM_REDIS_URL; the "
        "variable keeps a password off the command line)",
    )
    add_engine_args(ap)  # --engine, --dtype, --block-size, --kv-cache-gb, --num-blocks, ...
    for role in ("prefill", "decode"):
        ap.add_argument(
            f"--{role}-tensor-parallel-size",
            type=int,
            default=None,
            help=f"the {role} pool's tensor-parallel size (default: --tensor-parallel-size); "
            "the two sizes must divide one another",
        )
    ap.add_argument("--cpus-per-worker", type=float, default=None)
    ap.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    ap.add_argument(
        "--autoscale",
        action="store_true",
        help="size the pools from their load within --prefill-replicas / --decode-replicas "
        "(see the autoscaler flags)",
    )
    add_autoscale_args(ap)


def cmd_serve(args: argparse.Namespace, model: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = ClusterConfig(
        engine=engine_config(args, model),
        mode=args.mode,
        prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers,
        cpus_per_worker=args.cpus_per_worker,
        redis_url=args.redis_url or redis_url_from_env(),
        dashboard=not args.no_dashboard,
        # Our workers' gRPC opens to this token only, and the registry trusts only records
        # signed with it: the variable's, or a new one.
        cluster_token=token_from_env() or new_token(),
        redis_password=redis_password_from_env(),
        served_name=(args.served_model_name or [""])[0],
        prefill_tp=args.prefill_tensor_parallel_size,
        decode_tp=args.decode_tensor_parallel_size,
    )
    scaling = autoscaler_config(args, args.mode) if args.autoscale else None
    if scaling is not None and scaling.bounds[scaling.serving].min == 0:
        # the whole cluster may go to zero: requests must wait for its first worker
        if args.hold_for_worker_s is None:
            args.hold_for_worker_s = DEFAULT_HOLD_AT_ZERO_S
        log.info("scale to zero: requests wait up to %g s for a worker", args.hold_for_worker_s)
    try:
        with bind_listener(args.host, args.port) as sock, Cluster(config) as cluster:
            options = router_options(args, model, cluster.redis_url)
            options = replace(options, cluster_token=config.cluster_token)
            if scaling is not None:
                metrics = cluster.autoscale(scaling, args.scale_down_drain_s)
                options = replace(options, extra_metrics=(metrics.registry,))
            run_on_uvloop(run_router(options, cluster.banner(), sock))
    except KeyboardInterrupt:  # Ctrl-C during start-up: all started so far is stopped
        pass
    print("tandem serve: stopped", file=sys.stderr)
    return 0
