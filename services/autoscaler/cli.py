"""The autoscaler's flags, shared by `tandem serve --autoscale` and `tandem autoscale`;
`tandem autoscale --kuberay NS/NAME` sizes a KubeRay cluster's worker groups, and
`--dry-run` prints the decisions it would take against a live cluster, nothing done."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable

from services.autoscaler.loop import (
    DEFAULT_INTERVAL_S,
    DEFAULT_READY_TIMEOUT_S,
    Actuator,
    Autoscaler,
    AutoscalerConfig,
    Decision,
)
from services.autoscaler.pacing import Pacing
from services.autoscaler.ray_actuator import DEFAULT_DRAIN_S
from services.autoscaler.sizing import Bounds, Targets
from services.pb.events_pb2 import WorkerRecord

log = logging.getLogger(__name__)
_PACE, _TARGETS = Pacing(), Targets()  # their defaults, for the flags'


def add_autoscale_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("autoscaler")
    g.add_argument(
        "--prefill-replicas",
        default="0:4",
        metavar="MIN:MAX",
        help="prefill pool bounds (default %(default)s: prefill may go to zero)",
    )
    g.add_argument(
        "--decode-replicas",
        default="1:4",
        metavar="MIN:MAX",
        help="decode pool bounds, or the one pool's in colocated mode (default %(default)s)",
    )
    g.add_argument(
        "--ttft-target-s",
        type=float,
        default=_TARGETS.ttft_s,
        help="the prefill backlog is to be computed within this (default %(default)s)",
    )
    g.add_argument(
        "--itl-target-ms",
        type=float,
        default=_TARGETS.itl_s * 1000,
        help="inter-token latency to keep (default %(default)s)",
    )
    g.add_argument(
        "--kv-target",
        type=float,
        default=_TARGETS.kv_usage,
        help="share of a decode worker's KV blocks in use at most (default %(default)s)",
    )
    g.add_argument("--autoscale-interval-s", type=float, default=DEFAULT_INTERVAL_S)
    g.add_argument(
        "--stable-window-s",
        type=float,
        default=_PACE.stable_window_s,
        help="scale down only when the whole window agreed (default %(default)s)",
    )
    g.add_argument(
        "--panic-window-s",
        type=float,
        default=_PACE.panic_window_s,
        help="scale up when the need held this long (default %(default)s)",
    )
    g.add_argument("--up-cooldown-s", type=float, default=_PACE.up_cooldown_s)
    g.add_argument("--down-cooldown-s", type=float, default=_PACE.down_cooldown_s)
    g.add_argument(
        "--ready-timeout-s",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        help="a scale-up not serving by then is cancelled (default %(default)s)",
    )
    g.add_argument(
        "--scale-down-drain-s",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="a retired worker's time to finish what it holds (default %(default)s)",
    )


def autoscaler_config(args: argparse.Namespace, mode: str) -> AutoscalerConfig:
    """`args`: add_autoscale_args' flags, and the routers' --prefill-balance (both commands
    that size pools have it: `tandem serve` for its own routers, `tandem autoscale` to be
    told a cluster's)."""
    decode = _bounds(args.decode_replicas, "--decode-replicas")
    bounds = (
        {"both": decode}
        if mode == "colocated"
        else {"prefill": _bounds(args.prefill_replicas, "--prefill-replicas"), "decode": decode}
    )
    targets = Targets(args.ttft_target_s, args.itl_target_ms / 1000, args.kv_target)
    pacing = Pacing(
        stable_window_s=args.stable_window_s,
        panic_window_s=args.panic_window_s,
        up_cooldown_s=args.up_cooldown_s,
        down_cooldown_s=args.down_cooldown_s,
    )
    return AutoscalerConfig(
        bounds,
        targets,
        pacing,
        args.autoscale_interval_s,
        args.ready_timeout_s,
        decode_prefills=args.prefill_balance,
    )


def _bounds(text: str, flag: str) -> Bounds:
    lo, sep, hi = text.partition(":")
    try:
        return Bounds(int(lo), int(hi)) if sep else Bounds(int(lo), int(lo))
    except ValueError as e:
        raise ValueError(f"{flag} takes MIN:MAX, e.g. 1:4 ({e})") from None


def run_every(scaler: Autoscaler, stop: threading.Event) -> threading.Thread:
    """Ticks `scaler` every interval on a thread of its own until `stop` is set."""

    def loop() -> None:
        while not stop.wait(scaler.config.interval_s):
            try:
                scaler.tick()
            except Exception:  # one bad tick must not end autoscaling
                log.exception("autoscaler: tick failed")

    thread = threading.Thread(target=loop, name="autoscaler", daemon=True)
    thread.start()
    return thread


class DryRun:
    """An actuator that only remembers: each pool starts at the workers in the registry."""

    def __init__(self, read_records: Callable[[], list[WorkerRecord]], pools: list[str]) -> None:
        roles = [r.role for r in read_records()]
        self.set_to = {p: roles.count(p) for p in pools}

    def replicas(self) -> dict[str, int]:
        return dict(self.set_to)

    def scale(self, pool: str, replicas: int) -> None:
        self.set_to[pool] = replicas


def cmd_autoscale(args: argparse.Namespace) -> int:
    from services.cluster import redis_client
    from services.cluster.arrivals import Arrivals
    from services.cluster.cluster_token import token_from_env
    from services.cluster.held_requests import HeldRequests
    from services.cluster.redis_url import redis_url_from
    from services.cluster.registry import Registry

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.dry_run == bool(args.kuberay):
        print(
            "tandem autoscale needs one of --dry-run (print, act on nothing) and --kuberay "
            "NAMESPACE/NAME (act on that RayCluster); `tandem serve --autoscale` acts on its "
            "own cluster",
            file=sys.stderr,
        )
        return 2
    try:
        config = autoscaler_config(args, args.mode)
        url = redis_url_from(args.redis_url)
    except ValueError as e:
        print(f"tandem autoscale: {e}", file=sys.stderr)
        return 2
    redis = redis_client.connect(url)
    registry = Registry(redis, token=token_from_env())
    actuator = (
        DryRun(registry.workers, list(config.bounds))
        if args.dry_run
        else _kuberay(args, list(config.bounds), registry.workers)
    )
    scaler = Autoscaler(
        config,
        registry.workers,
        actuator,
        read_held=HeldRequests(redis).total,
        read_arrivals=Arrivals(redis).read,
    )
    for i in range(args.ticks or sys.maxsize):
        if i:
            time.sleep(config.interval_s)
        for d in scaler.tick():
            print(_line(d), flush=True)
    return 0


def _line(d: Decision) -> str:
    inputs = f" [{d.inputs}]" if d.inputs else ""
    change = f"{d.pool:7s} {d.current} -> {d.desired} (ready {d.ready})"
    return f"{time.strftime('%H:%M:%S')} {change}: {d.reason}{inputs}"


def _kuberay(
    args: argparse.Namespace, pools: list[str], read: Callable[[], list[WorkerRecord]]
) -> Actuator:
    """The RayCluster named by --kuberay, with the pod's credentials in a cluster, else
    the kubeconfig's ($KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    from services.autoscaler.kuberay_actuator import KubeRayActuator

    namespace, _, name = args.kuberay.partition("/")
    if not namespace or not name:
        raise SystemExit(f"--kuberay takes NAMESPACE/NAME, got {args.kuberay!r}")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    names = {"prefill": args.prefill_group, "decode": args.decode_group, "both": args.decode_group}
    groups = {pool: names[pool] for pool in pools}
    return KubeRayActuator(client.CustomObjectsApi(), namespace, name, groups, read)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "autoscale", help="size a running cluster's pools (--kuberay), or print how (--dry-run)"
    )
    p.add_argument("--dry-run", action="store_true", help="print decisions, act on nothing")
    p.add_argument(
        "--kuberay",
        metavar="NAMESPACE/NAME",
        default=None,
        help="act on this KubeRay RayCluster's worker groups (pod credentials, else kubeconfig)",
    )
    p.add_argument("--prefill-group", default="prefill", help="its prefill worker group's name")
    p.add_argument(
        "--decode-group", default="decode", help="its decode (or colocated) worker group's name"
    )
    p.add_argument(
        "--redis-url", default=None, help="the cluster's Redis (default: $TANDEM_REDIS_URL)"
    )
    p.add_argument("--mode", choices=("disagg", "colocated"), default="disagg")
    p.add_argument("--ticks", type=int, default=0, help="stop after this many (default: never)")
    p.add_argument(
        "--prefill-balance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the cluster's routers give decode workers prompts too, as `tandem serve "
        "--prefill-balance` (default on): sized so",
    )
    add_autoscale_args(p)
    p.set_defaults(func=cmd_autoscale)
