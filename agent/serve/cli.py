"""``edge-agent serve``: the on-device model behind a local OpenAI-compatible API.

Binds to 127.0.0.1 unless told otherwise: the API runs arbitrary prompts on
the device's CPU, so exposing it is a decision (``--host 0.0.0.0`` plus an API
key), never a default. The key is best given through the environment
(``EDGE_AGENT_SERVE_API_KEY``) or a systemd credential: a ``--api-key`` flag
is visible to every user in ``ps``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from edge_slm.logs import configure_logging, get_logger
from edge_slm.settings import is_loopback

API_KEY_ENV = "EDGE_AGENT_SERVE_API_KEY"
API_KEY_CREDENTIAL = "serve-api-key"  # LoadCredential= name under $CREDENTIALS_DIRECTORY
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "qnn", "dml")

log = get_logger("agent.serve")


def add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the model over a local OpenAI-compatible HTTP API",
        description="Serve one model at /v1/chat/completions and /v1/models (OpenAI's "
        "format; greedy unless a request asks for a temperature above 0, then sampled "
        "within top_p, reproducibly under a seed). Responses carry an extra "
        "x_confidence field in [0, 1].",
    )
    source = serve.add_mutually_exclusive_group()
    source.add_argument(
        "--model", help="catalog name of an installed model (default: the edge one)"
    )
    source.add_argument("--model-path", type=Path, help="serve this onnxruntime-genai folder")
    serve.add_argument("--model-id", help="the id clients send as 'model' (default: its name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: %(default)s)")
    serve.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto")
    serve.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    serve.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, or the systemd "
        f"credential '{API_KEY_CREDENTIAL}'; none: no key needed)",
    )
    serve.add_argument(
        "--max-tokens-cap",
        type=int,
        default=512,
        help="most new tokens a reply may have; larger max_tokens are lowered to it "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--queue-size",
        type=int,
        default=4,
        help="requests that may wait while one runs; more get 429 (default: %(default)s)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG logs prompts (default: INFO)")
    serve.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    serve.set_defaults(func=_cmd_serve)


def _api_key(flag: str | None) -> str | None:
    if flag:
        return flag
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(creds) / API_KEY_CREDENTIAL if creds else None
    if path is not None and path.is_file():
        return path.read_text().strip() or None
    return None


def _cmd_serve(args: argparse.Namespace) -> int:
    from agent.models import DEFAULT_MODEL, ModelCache, ModelError, default_cache_dir

    configure_logging(args.log_level, args.log_format)
    if args.max_tokens_cap < 1 or args.queue_size < 0 or args.threads < 0:
        print("--max-tokens-cap must be >= 1; --queue-size, --threads >= 0", file=sys.stderr)
        return 2
    if args.model_path is not None:
        model_dir: Path = args.model_path
        name = model_dir.resolve().name
        if not (model_dir / "genai_config.json").is_file():
            print(f"model problem: no genai_config.json in {model_dir}", file=sys.stderr)
            return 2
    else:
        name = args.model or DEFAULT_MODEL
        try:
            model_dir = ModelCache(default_cache_dir()).require(name)
        except ModelError as exc:
            print(f"model problem: {exc}", file=sys.stderr)
            return 2
    api_key = _api_key(args.api_key)
    if api_key is None and not is_loopback(args.host):
        log.warning("serve_open_to_network", host=args.host, hint="set an API key")

    import uvicorn

    from agent.engine.engine import Engine, EngineError
    from agent.serve.app import create_app

    try:
        engine = Engine(model_dir, name=name, provider=args.provider, threads=args.threads)
    except EngineError as exc:
        print(f"model problem: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        engine,
        model_name=args.model_id or name,
        max_tokens_cap=args.max_tokens_cap,
        queue_size=args.queue_size,
        api_key=api_key,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # keep our structlog pipeline; uvicorn's loggers propagate to it
        access_log=False,  # every request is logged once, with its numbers, by the app
        timeout_graceful_shutdown=10,
        # Longer than clients' own idle expiry (httpx: 5 s), so an idle keep-alive is
        # closed by the client, never under a request it is writing.
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown (stop accepting, finish
    # or cut streams, lifespan end), then restores the previous handlers and raises
    # the signal again. These handlers make that re-raise a clean exit (0).
    stopped_by: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
    server.run()
    log.info("serve_exit", signal=stopped_by[0] if stopped_by else None)
    return 0 if server.started else 1
