"""Run a router: the OpenAI API over whatever workers the registry in Redis lists.

`tandem serve` runs one next to the cluster it starts; `tandem router --redis-url URL`
runs one more against a cluster that is already up (a second replica, a restarted one).
Routers keep no state of their own that others lack: registry and KV index come from
Redis, so any number of them route alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from services.cluster.redis_url import redact_url, redis_url_from
from services.router.listener import bind_listener
from services.router.options import RouterOptions, router_options
from services.served_name import served_model_name

if TYPE_CHECKING:
    from services.router.cluster_view import ClusterView

T = TypeVar("T")
WORKER_POLL_S = 0.5  # the cluster view reads the registry this often


async def run_router(
    opts: RouterOptions, banner: list[str] | None = None, sock: socket.socket | None = None
) -> None:
    """Serve on `sock` (default: one bound to --host/--port now) until cancelled or
    Ctrl-C; `banner` lines are printed under the API address."""
    import uvicorn

    from engine.tokenizer import load_tokenizer
    from services.cluster.gc_settle import settle
    from services.router.app import create_app
    from services.router.assemble import make_dispatcher
    from services.router.drain import Drain, DrainingServer
    from services.router.metrics import RouterMetrics

    sock = sock or bind_listener(opts.host, opts.port)
    names = opts.served_model_names or (served_model_name(opts.model),)
    metrics = RouterMetrics(names[0], opts.extra_metrics)
    dispatcher = make_dispatcher(
        opts.redis_url, opts.dispatch, metrics, opts.cluster_token, opts.worker_ca
    )
    port = sock.getsockname()[1]
    try:
        await dispatcher.start()
        # Before any wait for workers: a bad model path or template is said at once.
        tokenizer = await asyncio.to_thread(load_tokenizer, opts.model)
        if opts.chat_template is not None:
            try:
                tokenizer.use_chat_template(opts.chat_template)
            except ValueError as e:
                raise SystemExit(f"tandem router: --chat-template: {e}") from None
        max_len = opts.max_model_len or await _workers_max_len(dispatcher.cluster, opts)
        name = names[0]
        drain = Drain()
        app = create_app(
            dispatcher,
            tokenizer,
            name,
            max_len,
            metrics,
            opts.api_keys,
            opts.max_body_bytes,
            drain,
            public_metrics=opts.public_metrics,
            aliases=names[1:],
            allowed_origins=opts.allowed_origins,
            generation_defaults=opts.generation_defaults,
            reasoning=opts.reasoning,
            tool_parser=opts.tool_parser,
            worker_targets=dispatcher.cluster.records,
        )
        # httptools parses HTTP in C (h11, the default, in Python); `loop` names what
        # run_on_uvloop already runs us on (serve() never sets a loop up itself).
        # TCP_NODELAY: uvloop and asyncio set it on every TCP transport they create.
        config = uvicorn.Config(
            app,
            host=opts.host,
            port=port,
            log_level="warning",
            access_log=False,  # it would format a line per request for a logger that drops it
            loop="uvloop",
            http="httptools",
            # once it stops accepting (drain.py): what the requests in flight have left
            timeout_graceful_shutdown=math.ceil(opts.drain_timeout_s),
        )
        server = DrainingServer(config, drain, opts.drain_delay_s)
        settle()
        d = opts.dispatch
        print(f"Tandem is serving {name} ({d.mode}, {d.routing} routing)")
        print(f"  OpenAI API:     http://{opts.host}:{port}/v1")
        for line in banner or []:
            print(f"  {line}")
        print("  Ctrl-C stops everything.", flush=True)
        await _serve_draining(server, sock)
    finally:
        await dispatcher.close()
        sock.close()


async def _workers_max_len(cluster: ClusterView, opts: RouterOptions) -> int:
    """The registered workers' shortest context length, waiting up to
    `opts.wait_for_workers_s` for the first worker to register."""
    deadline = time.monotonic() + opts.wait_for_workers_s
    if not cluster.records() and opts.wait_for_workers_s > 0:
        print(
            f"tandem router: no worker is registered yet; waiting up to "
            f"{opts.wait_for_workers_s:g} s for a worker",
            flush=True,
        )
    while not (records := cluster.records()) and time.monotonic() < deadline:
        await asyncio.sleep(WORKER_POLL_S)
    if not records:
        raise SystemExit(
            f"no workers are registered in {redact_url(opts.redis_url)} (or none signed "
            "with this TANDEM_CLUSTER_TOKEN); --max-model-len starts the router without "
            "them, --wait-for-workers-s waits for the first"
        )
    return min(r.max_model_len for r in records)


async def _serve_draining(server: Any, sock: socket.socket) -> None:
    """uvicorn drains on SIGTERM (drain.py), then delivers the signal again to whatever
    handler was there before it: with this one, that ends serving like Ctrl-C does (the
    dispatcher closes, `tandem serve` stops its cluster, exit 0) instead of killing the
    process."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        await server.serve(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop: the router's event loop (HTTP, SSE, gRPC streams) in C."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def cmd_router(args: argparse.Namespace, model: str) -> int:
    """`tandem router`: one more router for a running cluster."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.max_model_len is not None and args.max_model_len < 1:
        raise SystemExit(f"tandem router: --max-model-len must be positive: {args.max_model_len}")
    opts = router_options(args, model, redis_url_from(args.redis_url))
    opts = dataclasses.replace(opts, max_model_len=args.max_model_len)
    with contextlib.suppress(KeyboardInterrupt):
        run_on_uvloop(run_router(opts))
    print("tandem router: stopped", file=sys.stderr)
    return 0
