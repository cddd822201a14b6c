"""`tandem worker`: one worker in its own process, as a Kubernetes pod runs it. Its flags,
and the run until SIGINT/SIGTERM (process.py's WorkerServer does the work)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from engine.config import ROLES
from services.cluster.cluster_token import token_from_env
from services.cluster.redis_url import redis_url_from
from services.cluster.worker_tls import server_tls_from_env
from services.worker.core import WAITING_PER_SEQ, WorkerConfig
from services.worker.engine_flags import add_engine_args, engine_config
from services.worker.liveness import DEFAULT_STALL_S
from services.worker.preflight import run_preflight
from services.worker.process import WorkerNetConfig, WorkerServer

log = logging.getLogger(__name__)


def add_worker_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--redis-url", default=None, help="default: $TANDEM_REDIS_URL")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--advertise-host", default=None, help="address peers dial (default: host)")
    ap.add_argument("--model", default=None)
    add_engine_args(ap)  # --engine, --dtype, --block-size, --kv-cache-gb, --num-blocks, ...
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="its own Prometheus /metrics on --host (default 0: a free port, in its registry "
        "record and the router's /metrics/workers; -1: none)",
    )
    ap.add_argument(
        "--stream-port",
        type=int,
        default=0,
        help="its token stream on --host, where routers send Decode calls (one TCP "
        "connection per router; default 0: a free port, in its registry record; -1: none, "
        "they go over gRPC)",
    )
    ap.add_argument(
        "--served-model-name",
        default="",
        help="its metrics' model_name, as the router's --served-model-name (default: from "
        "the model's file name)",
    )
    ap.add_argument("--lease-s", type=float, default=30.0)
    ap.add_argument(
        "--max-waiting",
        type=int,
        default=None,
        help="requests that may wait for a place in the batch before the worker refuses "
        "more (RESOURCE_EXHAUSTED; the router tries another worker) "
        f"(default: {WAITING_PER_SEQ} x --max-num-seqs)",
    )
    ap.add_argument(
        "--drain-timeout-s",
        type=float,
        default=30.0,
        help="on SIGTERM: out of the registry at once, then this long for the streams in "
        "flight to finish (default %(default)s)",
    )
    ap.add_argument(
        "--stall-timeout-s",
        type=float,
        default=DEFAULT_STALL_S,
        help="an engine in one step this long takes the worker out of the registry "
        "(default %(default)s; more than the longest step)",
    )


def run_standalone(args: argparse.Namespace, model: str) -> int:
    """`tandem worker`: serve until SIGINT/SIGTERM, then deregister and stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_preflight()  # RDMA requested but UCX only has TCP: exits here, before the model loads
    engine = engine_config(args, model, role=args.role, num_threads=args.threads)
    # The first line a pod's log shows: imports are done, the model load begins.
    log.info("%s (%s): loading %s", args.worker_id, args.role, model)
    net = WorkerNetConfig(
        redis_url=redis_url_from(args.redis_url),
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        stall_s=args.stall_timeout_s,
        drain_s=args.drain_timeout_s,
        cluster_token=token_from_env(),
        tls=server_tls_from_env(),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        stream_port=None if args.stream_port < 0 else args.stream_port,
    )
    config = WorkerConfig(
        args.worker_id,
        engine,
        lease_s=args.lease_s,
        max_waiting=args.max_waiting,
        served_name=args.served_model_name,
    )
    server = WorkerServer(config, net)

    async def main() -> None:
        event_loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            event_loop.add_signal_handler(sig, server.stopping.set)
        address = await server.start()
        print(f"{args.worker_id} ({args.role}) serving on {address}", flush=True)
        if server.stream_address:
            print(f"  token stream on {server.stream_address}", flush=True)
        if server.metrics_address:
            print(f"  metrics on http://{server.metrics_address}/metrics", flush=True)
        await server.stopping.wait()
        await server.stop()

    # uvloop: the loop that carries every token (engine thread -> queue -> gRPC) in C.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return 0
