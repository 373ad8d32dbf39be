"""``leap0-backend``: serve the API, issue API keys, report what this machine can isolate.

    leap0-backend serve [--host 127.0.0.1] [--port 8360] [--data-dir DIR]
                        [--allow-mount-endpoint CIDR ...] [--insecure-registry HOST:PORT ...]
                        [--call-timeout SECONDS] [--max-memory-mib MIB]
                        [--sandbox-domain DOMAIN] [--tls-cert PEM --tls-key PEM]
    leap0-backend api-key create --org NAME [--data-dir DIR]
    leap0-backend doctor [--data-dir DIR]

``api-key create`` prints the key alone on one line of stdout (so ``KEY=$(...)`` works) and
nothing else there; the server stores only its hash, so it cannot be shown again.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8360
DATA_DIR_ENV = "LEAP0_BACKEND_DATA_DIR"


def default_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_data_dir("leap0-backend", appauthor=False))


def _registry(value: str) -> str:
    from pulumi_leap0 import spec

    if spec.image_registry(f"{value}/x") != value.lower() or "/" in value:
        raise argparse.ArgumentTypeError("a registry is HOST or HOST:PORT")
    return value.lower()


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CIDR: {value!r}") from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def _serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--egress-resolver", metavar="IP:PORT", default=None,
                       help="DNS server the egress filters of custom network policies "
                       "resolve allowed names with, and mounts their endpoints (default: "
                       "the host's resolver)")
    serve.add_argument("--egress-ca-file", metavar="PEM", type=Path, default=None,
                       help="extra CA the egress filters trust for upstream TLS (transforms)")
    serve.add_argument("--allow-mount-endpoint", metavar="CIDR", action="append", default=[],
                       type=_cidr, dest="allow_mount_endpoints",
                       help="let mount endpoints reach addresses in CIDR although they are "
                       "this host's, loopback, link-local or a sandbox network (an S3 "
                       "server on this host); repeatable")
    serve.add_argument("--insecure-registry", metavar="HOST:PORT", action="append",
                       default=[], type=_registry, dest="insecure_registries",
                       help="pull template images from this registry over plain HTTP or "
                       "unverified TLS (a local test registry); every other registry over "
                       "verified TLS only; repeatable")
    serve.add_argument("--call-timeout", metavar="SECONDS", type=_positive, default=None,
                       help="how long a file call may take before it is answered 504 "
                       "(default: 60); an execute has its own timeout")
    serve.add_argument("--max-memory-mib", metavar="MIB", type=int, default=None,
                       help="memory all sandboxes may hold at once; a sandbox that does "
                       "not fit is refused with 503 (default: the host's memory less a "
                       "tenth, at least 1 GiB)")
    serve.add_argument("--sandbox-domain", metavar="DOMAIN", default=None,
                       help="host names under DOMAIN reach sandboxes: {id}-{port}.DOMAIN "
                       "and presigned {token}.DOMAIN a port in the sandbox, {id}.DOMAIN "
                       "the sandbox's API calls; the SDK's LEAP0_SANDBOX_DOMAIN (default: "
                       "localhost:PORT)")
    serve.add_argument("--tls-cert", metavar="PEM", type=Path, default=None,
                       help="serve HTTPS with this certificate (chain) and --tls-key: the "
                       "SDK's preview URLs are https")
    serve.add_argument("--tls-key", metavar="PEM", type=Path, default=None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leap0-backend", description="A local server that speaks the Leap0 API."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def data_dir_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help=f"state folder (default: ${DATA_DIR_ENV} or a per-user data folder)",
        )

    serve = commands.add_parser("serve", help="serve the Leap0 API")
    _serve_options(serve)
    data_dir_option(serve)

    api_key = commands.add_parser("api-key", help="manage API keys")
    key_commands = api_key.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="create a key (and the organization)")
    create.add_argument("--org", required=True, help="organization name")
    data_dir_option(create)

    doctor = commands.add_parser("doctor", help="print what isolation this machine gives")
    data_dir_option(doctor)
    return parser


def _serve(host: str, port: int, data_dir: Path, log_level: str,
           egress_resolver: str | None = None, egress_ca_file: Path | None = None,
           allow_mount_endpoints: Sequence[str] = (),
           call_timeout_s: float | None = None, max_memory_mib: int | None = None,
           insecure_registries: Sequence[str] = (), sandbox_domain: str | None = None,
           tls_cert: Path | None = None, tls_key: Path | None = None) -> int:
    import uvicorn

    from pulumi_leap0 import spec
    from pulumi_leap0.backend import runtime
    from pulumi_leap0.backend.app import create_app
    from pulumi_leap0.backend.lifecycle import CALL_TIMEOUT_S

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runner = runtime.make_runner(data_dir / "sandboxes", egress_resolver=egress_resolver,
                                 egress_ca_file=egress_ca_file,
                                 allow_mount_endpoints=allow_mount_endpoints,
                                 insecure_registries=insecure_registries)
    app = create_app(data_dir, runner=runner, call_timeout_s=call_timeout_s or CALL_TIMEOUT_S,
                     memory_capacity_mib=max_memory_mib,
                     sandbox_domain=sandbox_domain or f"localhost:{port}",
                     url_scheme="https" if tls_cert else "http")
    # httptools and uvloop when installed ("auto"): they roughly double GET throughput.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        # Nothing reads the client's address, and no X-Forwarded-* header is to be believed.
        proxy_headers=False,
        loop="auto",
        http="auto",
        lifespan="on",
        timeout_graceful_shutdown=10,
        # PTY connections (the only WebSockets): the sans-I/O websockets protocol, and no
        # message larger than a terminal's input bound (larger ones close with 1009).
        ws="websockets-sansio",
        ws_max_size=spec.MAX_PTY_INPUT_BYTES,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally after SIGTERM/SIGINT; a failed startup leaves it not started.
    return 0 if server.started else 1


def _api_key_create(org: str, data_dir: Path) -> int:
    from pulumi_leap0.backend.store import DB_FILE_NAME, Store

    org = org.strip()
    if not org:
        print("leap0-backend: --org must not be empty", file=sys.stderr)
        return 2
    store = Store(data_dir / DB_FILE_NAME)
    try:
        key = store.create_api_key(org)
    finally:
        store.close()
    print(key)
    return 0


def _doctor(data_dir: Path) -> int:
    from pulumi_leap0.backend import runtime

    runner = runtime.make_runner(data_dir / "sandboxes")
    print(json.dumps(runtime.capability_report(runner), indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path = args.data_dir or default_data_dir()
    if args.command == "serve":
        if (args.tls_cert is None) != (args.tls_key is None):
            print("leap0-backend: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        return _serve(args.host, args.port, data_dir, args.log_level, args.egress_resolver,
                      args.egress_ca_file, args.allow_mount_endpoints, args.call_timeout,
                      args.max_memory_mib, args.insecure_registries, args.sandbox_domain,
                      args.tls_cert, args.tls_key)
    if args.command == "api-key":
        return _api_key_create(args.org, data_dir)
    return _doctor(data_dir)


if __name__ == "__main__":
    sys.exit(main())
