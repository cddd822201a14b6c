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
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from services.cluster.cluster_token import token_from_env
from services.cluster.redis_url import redact_url, redis_url_from
from services.cluster.worker_tls import client_ca_from_env
from services.router.admission import DEFAULT_QUEUE_PER_SEQ
from services.router.api_keys import ApiKeys, gather_keys
from services.router.dispatch_config import (
    DEFAULT_DECODE_ATTEMPTS,
    DEFAULT_HOLD_AT_ZERO_S,
    DEFAULT_MAX_HELD,
    MODES,
    DispatchConfig,
)
from services.router.listener import bind_listener
from services.router.middleware import DEFAULT_MAX_BODY_BYTES
from services.router.routing import ROUTINGS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from services.pb.events_pb2 import WorkerRecord

T = TypeVar("T")
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_DRAIN_DELAY_S = 5.0  # Kubernetes' usual `preStop: sleep 5` (why: drain.py)


@dataclass(frozen=True, slots=True)
class RouterOptions:
    model: str  # for the tokenizer and the served model name
    redis_url: str = field(repr=False)  # may carry a password (redis_url.py)
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    # for the workers' gRPC (cluster_token.py) and the registry's signatures
    cluster_token: str | None = field(default=None, repr=False)
    drain_delay_s: float = DEFAULT_DRAIN_DELAY_S  # SIGTERM: serving on while /ready is 503
    worker_ca: bytes | None = field(default=None, repr=False)  # TLS to workers (worker_tls.py)
    extra_metrics: tuple[CollectorRegistry, ...] = ()  # also on /metrics (the autoscaler's)
    # The context length to serve; None: the registered workers' shortest, read at start
    # (then at least one must be registered). Workers refuse what exceeds their own.
    max_model_len: int | None = None


def served_model_name(model: str) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct; a directory -> its name."""
    p = Path(model)
    return p.name.split(".")[0] if p.suffix == ".gguf" else p.name


async def run_router(
    opts: RouterOptions, banner: list[str] | None = None, sock: socket.socket | None = None
) -> None:
    """Serve on `sock` (default: one bound to --host/--port now) until cancelled or
    Ctrl-C; `banner` lines are printed under the API address."""
    import uvicorn

    from engine.tokenizer import load_tokenizer
    from services.router.app import create_app
    from services.router.assemble import make_dispatcher
    from services.router.drain import Drain, DrainingServer
    from services.router.metrics import RouterMetrics

    sock = sock or bind_listener(opts.host, opts.port)
    metrics = RouterMetrics(opts.extra_metrics)
    dispatcher = make_dispatcher(
        opts.redis_url, opts.dispatch, metrics, opts.cluster_token, opts.worker_ca
    )
    port = sock.getsockname()[1]
    try:
        await dispatcher.start()
        max_len = opts.max_model_len or _workers_max_len(dispatcher.cluster.records(), opts)
        tokenizer = await asyncio.to_thread(load_tokenizer, opts.model)
        name = served_model_name(opts.model)
        drain = Drain()
        app = create_app(
            dispatcher, tokenizer, name, max_len, metrics, opts.api_keys, opts.max_body_bytes, drain
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


def _workers_max_len(records: Sequence[WorkerRecord], opts: RouterOptions) -> int:
    if not records:
        raise SystemExit(
            f"no workers are registered in {redact_url(opts.redis_url)} (or none signed "
            "with this TANDEM_CLUSTER_TOKEN); --max-model-len starts the router without them"
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


def add_router_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    ap.add_argument(
        "--api-key",
        action="append",
        help="require this key (repeat for several; also $TANDEM_API_KEY, comma-separated)",
    )
    ap.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help="require one of the keys in this file, one a line (keeps them off the command line)",
    )
    ap.add_argument(
        "--max-requests-per-key",
        type=int,
        default=None,
        help="requests one API key may have in progress; past it, 429 (default: no limit)",
    )
    ap.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 before they are read (default %(default)s)",
    )
    ap.add_argument(
        "--drain-timeout-s",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="on SIGTERM (after --drain-delay-s) or Ctrl-C: stop accepting, and give the "
        "requests in flight this long to finish (default %(default)s)",
    )
    ap.add_argument(
        "--drain-delay-s",
        type=float,
        default=DEFAULT_DRAIN_DELAY_S,
        help="on SIGTERM: /ready answers 503 at once, and new requests are still served "
        "this long, while load balancers take the router out; Ctrl-C skips it "
        "(default %(default)s)",
    )
    ap.add_argument("--mode", choices=MODES, default="disagg")
    ap.add_argument(
        "--routing",
        choices=ROUTINGS,
        default="kv",
        help="how a pool's worker is chosen: kv = prefix cache + load (default)",
    )
    ap.add_argument(
        "--local-prefill-tokens",
        type=int,
        default=64,
        help="prompts with at most this many tokens not cached on the chosen decode worker "
        "prefill there",
    )
    ap.add_argument(
        "--prefill-timeout-s",
        type=float,
        default=None,
        help="how long a remote prefill may take before another prefill worker, then the "
        "decode worker, takes it over (default: from the prompt and the measured speed)",
    )
    ap.add_argument(
        "--decode-attempts",
        type=int,
        default=DEFAULT_DECODE_ATTEMPTS,
        help="decode workers a request may run on: when one fails, the request resumes on "
        "another with the tokens already streamed (default %(default)s)",
    )
    ap.add_argument(
        "--queue-per-seq",
        type=float,
        default=DEFAULT_QUEUE_PER_SEQ,
        help="requests accepted per worker beyond its batch, per batch slot: past "
        "max_num_seqs x (1 + this) per worker the router answers 429 (default %(default)s; "
        "-1: accept everything)",
    )
    ap.add_argument(
        "--hold-for-worker-s",
        type=float,
        default=None,
        help="a request finding no worker to serve it (the cluster scaled to zero) waits "
        "this long for the autoscaler to start one, then 503 (default 0: 503 at once; "
        f"tandem serve with --decode-replicas 0:N: {DEFAULT_HOLD_AT_ZERO_S:g})",
    )
    ap.add_argument(
        "--max-held-requests",
        type=int,
        default=DEFAULT_MAX_HELD,
        help="requests held at once while no worker serves; more get 503 at once "
        "(default %(default)s)",
    )
    ap.add_argument(
        "--prefill-balance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a decode worker prefills a prompt itself when it would start it sooner than "
        "any prefill worker (default on)",
    )


def router_options(args: argparse.Namespace, model: str, redis_url: str) -> RouterOptions:
    dispatch = DispatchConfig(
        mode=args.mode,
        routing=args.routing,
        local_prefill_tokens=args.local_prefill_tokens,
        balance_prefill=args.prefill_balance,
        decode_attempts=args.decode_attempts,
        queue_per_seq=args.queue_per_seq,
        prefill_timeout_s=args.prefill_timeout_s,
        hold_for_worker_s=args.hold_for_worker_s or 0.0,
        max_held_requests=args.max_held_requests,
    )
    try:
        keys = gather_keys(args.api_key, os.environ.get("TANDEM_API_KEY"), args.api_keys_file)
        api_keys = ApiKeys(keys, args.max_requests_per_key)
    except (OSError, ValueError) as e:  # an unreadable key file, a limit without keys
        raise SystemExit(f"tandem router: {e}") from None
    return RouterOptions(
        model,
        redis_url,
        args.host,
        args.port,
        api_keys,
        dispatch,
        args.max_body_bytes,
        args.drain_timeout_s,
        token_from_env(),
        args.drain_delay_s,
        client_ca_from_env(),
    )


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
