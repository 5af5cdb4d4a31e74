"""`bundlerec console`: the operator console (bundlerec/console/), served with uvicorn.

    bundlerec console [--host 127.0.0.1] [--port 8090] [--auth-file F] [--models DIR]

Every other setting is BUNDLEREC_CONSOLE_* (bundlerec/console/settings.py). Without an auth file
it makes a one-off token, good until it stops, and prints the address that signs in with it; it
then listens on loopback only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import ssl
import sys

from pydantic import ValidationError


def add_console_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: the setting, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default: the setting, 8090; 0: a free one)")
    parser.add_argument("--auth-file", help="who may sign in (default: the setting; none: a one-off token)")
    parser.add_argument("--models", help="the models directory the ranker serves from (default: the setting)")


def run_console(args: argparse.Namespace) -> int:
    import uvicorn

    from bundlerec.console.access import Access
    from bundlerec.console.app import create_app
    from bundlerec.console.settings import LOOPBACK, ConsoleSettings

    overrides = {"host": args.host, "port": args.port, "auth_file": args.auth_file, "models_dir": args.models}
    try:
        settings = ConsoleSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"bundlerec console: {problems}", file=sys.stderr)
        return 2
    token = ""
    if settings.auth_file:
        access = Access.from_file(settings.auth_file)
    elif settings.host not in LOOPBACK:
        print(
            f"bundlerec console: listening on {settings.host} needs an auth file (BUNDLEREC_CONSOLE_AUTH_FILE)",
            file=sys.stderr,
        )
        return 2
    else:
        access, token = Access.one_off()
    tls = bool(settings.tls_cert_file and settings.tls_key_file)
    app = create_app(settings, access, secure_cookie=tls)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(128)  # connections wait in the backlog from the moment the address is printed
    port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{scheme}://{host}:{port}/"
    print(f"console: {address}login?token={token}" if token else f"console: {address}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = uvicorn.Config(
        app,
        access_log=False,  # uvicorn's would write query strings (a preview's shopper id); ours does not
        log_level="warning",
        ssl_certfile=settings.tls_cert_file or None,
        ssl_keyfile=settings.tls_key_file or None,
        ssl_ca_certs=settings.tls_client_ca_file or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
    )
    # uvicorn stops gracefully on SIGTERM or SIGINT, then raises the signal again for the handler
    # that was there before it: this one, so that a requested stop exits 0, as the services do
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
