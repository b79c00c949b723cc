"""`triage` entry point. Parses flags only when called; every subcommand gets typed settings passed in."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from classifiers import ClassifierFileError
from router.errors import ConfigError
from router.processes import CHILD_ENV, holding_sighup, reuse_port_socket, supervise, watch_parent
from router.settings import RoutingSettings, ServerSettings, Settings, WorkerSettings, load_settings

if TYPE_CHECKING:
    import socket

    import uvicorn

    from router.api.wiring import ShutdownClock

__all__ = ["build_settings", "main", "parser"]


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway",
        description="Run the gateway. With no --config, two local workers are assumed (--small, --large) "
        "and their served model names are asked from each worker's /v1/models.",
    )
    p.add_argument("--config", type=Path, help="YAML config file (see deploy/*/gateway.yaml)")
    p.add_argument("--small", metavar="URL", help="base URL of the small worker, e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--large", metavar="URL", help="base URL of the large worker, e.g. http://127.0.0.1:8002/v1")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 9000)")
    p.add_argument("--threshold", type=float, help="score at or above which `auto` goes to the large model")
    p.add_argument("--alias", help="model name that asks for routing (default auto)")
    p.add_argument("--redis", metavar="URL", help="Redis for limits shared by replicas (or env TRIAGE_REDIS_URL)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", default=None, help="log every request line")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes on the port (SO_REUSEPORT); more than 1 needs Redis (limits.redis_url or --redis)",
    )
    p.set_defaults(run=_serve)


def build_settings(args: argparse.Namespace) -> Settings:
    """Config file (or embedded defaults), then flags on top."""
    base = load_settings(args.config) if args.config else Settings.local()
    data = base.model_dump()
    if args.small or args.large:
        if args.config:
            raise ConfigError(
                "--small/--large replace the workers of the embedded defaults; with --config, set workers in the file"
            )
        defaults = Settings.local()
        data["workers"] = [
            WorkerSettings(
                name="small",
                role=defaults.workers[0].role,
                base_url=args.small or defaults.workers[0].base_url,
            ).model_dump(),
            WorkerSettings(
                name="large",
                role=defaults.workers[1].role,
                base_url=args.large or defaults.workers[1].base_url,
            ).model_dump(),
        ]
    server = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "access_log": args.access_log,
        }.items()
        if v is not None
    }
    routing = {k: v for k, v in {"threshold": args.threshold, "alias": args.alias}.items() if v is not None}
    data["server"] = ServerSettings(**{**data["server"], **server}).model_dump()
    try:
        data["routing"] = RoutingSettings(**{**data["routing"], **routing}).model_dump()
    except ValidationError as exc:  # e.g. --threshold beside the file's routing.target_large_share
        messages = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        raise ConfigError(f"--threshold/--alias: {messages}") from None
    if args.redis:
        data["limits"] = {**data["limits"], "redis_url": args.redis}
    return Settings.model_validate(data)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from router.api.app import create_app
    from router.api.http_guard import guarded_protocol

    settings = build_settings(args)
    child = bool(os.environ.get(CHILD_ENV))
    if child and os.environ[CHILD_ENV].isdigit():
        watch_parent(int(os.environ[CHILD_ENV]))  # never serve the port on after the supervisor is gone
    if args.workers < 1:
        raise ConfigError("--workers: at least 1")
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.workers > 1 and not child:
        if not (settings.limits.redis_url or os.environ.get("TRIAGE_REDIS_URL")):
            raise ConfigError(
                "--workers > 1 needs Redis (limits.redis_url, --redis or TRIAGE_REDIS_URL): the processes share "
                "limits, the ledger, the cache and conversation memory through it"
            )
        return supervise(args.workers, args.argv)  # the children run the same command, as it was given
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    _tune_gc()
    workers = app.state.triage.service.workers
    for w in workers:
        logging.getLogger("triage").info("worker %s (%s): %s at %s", w.name, w.role.value, w.model, w.base_url)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http=guarded_protocol(
            max_header_bytes=settings.server.max_header_bytes,
            head_timeout=settings.server.head_timeout,
            body_timeout=settings.server.body_timeout,
        ),
        timeout_keep_alive=settings.server.keep_alive_timeout,
        log_level=settings.server.log_level,
        access_log=settings.server.access_log,
        timeout_graceful_shutdown=settings.server.graceful_shutdown_timeout,
        proxy_headers=False,  # X-Forwarded-For is trusted by auth.trusted_proxies alone, never by uvicorn
    )
    server = _server(config, app.state.shutdown)
    if child:  # one of --workers N: the port is shared, the kernel spreads connections
        server.run(sockets=[reuse_port_socket(settings.server.host, settings.server.port)])
    else:
        server.run()
    return 0


def _server(config: uvicorn.Config, clock: ShutdownClock) -> uvicorn.Server:
    """uvicorn's server, telling the app when it began to shut down: the in-flight requests' wait and the shadow
    calls' wait (in the app's lifespan) then share one graceful timeout."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            clock.began = time.monotonic()
            await super().shutdown(sockets)

    return Server(config)


def _tune_gc() -> None:
    """What start-up made (modules, settings, the classifier) lives as long as the process: frozen, full
    collections stop scanning it (they took about 45 ms each, every second or two under load). And a young
    collection waits for 10,000 new objects instead of 700: the requests in flight hold more than 700 between
    them, so at the default a collection ran every few ms and found nothing to free. Measured with gc.callbacks
    at 16 concurrent requests: about 25 us of GC per request before, under 0.2 us after. Cyclic garbage still
    triggers collections; the soak bench checks that memory stays flat."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="API key helpers (keys are configured as SHA-256 hashes, never in clear)")
    cmds = p.add_subparsers(dest="keys_command", required=True)
    h = cmds.add_parser("hash", help="print the sha256 to put under auth.keys for an API key")
    h.add_argument("key", nargs="?", help="the key (default: read one line from standard input)")
    h.set_defaults(run=_hash_key)


def _hash_key(args: argparse.Namespace) -> int:
    from router.api.auth import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        raise ConfigError("no key given")
    print(hash_key(key))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triage", description="llm-triage: cost-aware LLM request router")
    sub = p.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _keys_parser(sub)
    from classifiers.lab.cli import add_commands as classifier_commands
    from router.analytics.cli import add_commands as analytics_commands

    analytics_commands(sub)
    from router.analytics.replay import add_command as replay_command

    replay_command(sub)
    from router.analytics.label import add_command as label_command

    label_command(sub)
    classifier_commands(sub)
    from classifiers.lab.cli_data import add_commands as data_commands

    data_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # SIGHUP asks a running gateway to reload; one that lands while `serve` starts must not end it.
    with holding_sighup() if given[:1] == ["serve"] else contextlib.nullcontext():
        return _run(given)


def _run(given: list[str]) -> int:
    args = parser().parse_args(given)
    args.argv = given
    try:
        code: int = args.run(args)
    except (ConfigError, ClassifierFileError, FileNotFoundError, ValueError) as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
