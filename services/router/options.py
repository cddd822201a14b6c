"""The router's options: what `tandem router` and `tandem serve` take on the command line,
and the typed `RouterOptions` they become (the only place the router's flags are read)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cluster.cluster_token import token_from_env
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
from services.router.generation_config import load_defaults
from services.router.middleware import DEFAULT_MAX_BODY_BYTES
from services.router.reasoning import PARSERS, ReasoningSyntax
from services.router.routing import ROUTINGS
from services.router.tool_parsers import PARSERS as TOOL_PARSERS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

API_KEY_ENV = ("TANDEM_API_KEY", "VLLM_API_KEY")  # keys from both, vLLM's for its users
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
    # With no max_model_len and no worker registered: how long to wait for one (0: exit)
    wait_for_workers_s: float = 0.0
    public_metrics: bool = False  # /metrics without an API key (a scraper in the cluster)
    served_model_names: tuple[str, ...] = ()  # the API's names; () : from the model's file
    allowed_origins: tuple[str, ...] = ()  # CORS: browsers' origins (none: no CORS headers)
    chat_template: str | None = None  # a Jinja template instead of the model's own
    # a request's sampling defaults, from the model's generation_config.json (vLLM's flag)
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    reasoning: ReasoningSyntax | None = None  # --reasoning-parser: chat's thinking split off
    tool_parser: str | None = None  # --tool-call-parser: tool_parsers.py's name


def add_router_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    ap.add_argument(
        "--api-key",
        action="append",
        help="require this key (repeat for several; also $TANDEM_API_KEY and vLLM's "
        "$VLLM_API_KEY, comma-separated)",
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
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the model's names in the API (vLLM's flag): requests may use any, answers "
        "carry the first (default: the model file's name)",
    )
    ap.add_argument(
        "--allowed-origins",
        type=_origins,
        default=(),
        help="origins a browser may call the API from, as a JSON list (vLLM's form, e.g. "
        "'[\"https://chat.example.com\"]', '[\"*\"]') or comma-separated (default: none)",
    )
    ap.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE_OR_TEMPLATE",
        help="a Jinja chat template, or a file holding one, instead of the model's own",
    )
    ap.add_argument(
        "--generation-config",
        default="auto",
        metavar="auto|vllm|FOLDER",
        help="sampling defaults for what a request leaves out: auto, the model's own "
        "generation_config.json where it has one; vllm, none (OpenAI's); or a folder's",
    )
    ap.add_argument(
        "--reasoning-parser",
        choices=sorted(PARSERS),
        default=None,
        help="split a reasoning model's thinking (<think>...</think>) from its chat answers "
        "into reasoning_content (vLLM's flag): qwen3, whose output opens the tag; "
        "deepseek_r1 and minimax_m2, whose templates open it (default: no split)",
    )
    ap.add_argument(
        "--tool-call-parser",
        choices=sorted(TOOL_PARSERS),
        default=None,
        help="read tool calls in the model's own format, for tool_choice auto (vLLM's flag): "
        "hermes (<tool_call> JSON, Qwen and Hermes), llama3_json, minimax_m2 (default: none; "
        "tool_choice required or a named function works without one)",
    )
    ap.add_argument(
        "--wait-for-workers-s",
        type=float,
        default=0.0,
        help="with no worker registered and no --max-model-len (the length is read from "
        "the workers), wait this long for the first to register instead of exiting "
        "(default %(default)s: exit at once, saying so)",
    )
    ap.add_argument(
        "--public-metrics",
        action="store_true",
        help="/metrics answers without an API key (for a Prometheus scraper; keep the port "
        "off the internet). /health and /ready always do, and say nothing else",
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
    env_keys = ",".join(os.environ.get(v, "") for v in API_KEY_ENV)
    try:
        keys = gather_keys(args.api_key, env_keys, args.api_keys_file)
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
        public_metrics=args.public_metrics,
        wait_for_workers_s=args.wait_for_workers_s,
        served_model_names=tuple(args.served_model_name or ()),
        allowed_origins=args.allowed_origins,
        chat_template=_template(args.chat_template),
        generation_defaults=_generation_defaults(args.generation_config, model),
        reasoning=PARSERS[args.reasoning_parser] if args.reasoning_parser else None,
        tool_parser=args.tool_call_parser,
    )


def _origins(spec: str) -> tuple[str, ...]:
    """`["a", "b"]` (JSON, as vLLM takes it) or `a,b`."""
    if spec.lstrip().startswith("["):
        try:
            got = json.loads(spec)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not a JSON list: {e}") from None
        if not isinstance(got, list) or not all(isinstance(o, str) for o in got):
            raise argparse.ArgumentTypeError('a JSON list of strings, e.g. ["*"]')
        return tuple(got)
    return tuple(o.strip() for o in spec.split(",") if o.strip())


def _generation_defaults(spec: str, model: str) -> dict[str, Any]:
    try:
        return load_defaults(spec, model)
    except ValueError as e:
        raise SystemExit(f"tandem router: --generation-config: {e}") from None


def _template(spec: str | None) -> str | None:
    """A template given inline or as a file's path (vLLM reads either)."""
    if spec is None:
        return None
    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # a template too long to be a path
        is_file = False
    if not is_file:
        if "{" not in spec:  # neither a file nor Jinja: most likely a mistyped path
            raise SystemExit(f"tandem router: --chat-template: no such file: {spec}")
        return spec
    try:
        return path.read_text()
    except OSError as e:
        raise SystemExit(f"tandem router: --chat-template: {e}") from None
