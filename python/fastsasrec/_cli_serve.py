"""``fastsasrec serve MODEL``: the command line of the HTTP server (its flags, checked,
and the server started)."""
from __future__ import annotations

import argparse
import os
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from fastsasrec.cli import CLIError

    try:
        from fastsasrec import serve
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CLIError(f"serve needs starlette and uvicorn: pip install \"fastsasrec[serve]\" ({e})") from None
    if not os.path.exists(args.model):
        raise CLIError(f"MODEL file {args.model!r} does not exist")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 0:
        raise CLIError(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not value > 0:
            raise CLIError(f"{flag} must be > 0 seconds, got {value}")
    if args.max_connections is not None and args.max_connections < 1:
        raise CLIError(f"--max-connections must be >= 1, got {args.max_connections}")
    for flag, value in (("--store-timeout", args.store_timeout),
                        ("--denylist-refresh", args.denylist_refresh)):
        if not value > 0:
            raise CLIError(f"{flag} must be > 0 seconds, got {value}")
    store = args.store
    if store != "memory" and not store.startswith(("redis://", "rediss://", "unix://")):
        raise CLIError(f"--store must be memory or a redis:// URL (redis://HOST:PORT/DB), got {store!r}")
    if store != "memory" and args.denylist_file is not None:
        raise CLIError(f"--denylist-file is for --store memory; with --store {store} the "
                       f"denylist lives in Redis")
    if store != "memory":
        try:
            import redis  # noqa: F401
        except ImportError:
            raise CLIError(f"--store {store} needs redis-py: pip install \"fastsasrec[redis]\"") from None
    n = args.workers
    if n < 1:
        raise CLIError(f"--workers must be >= 1, got {n}")
    if n > 1 and store == "memory":
        raise CLIError(f"--workers {n} needs --store redis://HOST:PORT/DB: with the in-process "
                       f"store each worker would hold its own sessions and denylist, and a "
                       f"session's next event could reach a worker that does not know it")
    from fastsasrec.serve.access import read_api_keys
    from fastsasrec.serve.workers import engine_threads

    keys = read_api_keys(args.api_key_file) if args.api_key_file is not None else None
    # Workers: each an equal share of the cores unless --threads; the supervisor watches
    # the file and rolls a reload through them.
    kw = dict(device=args.device, num_threads=args.threads if n == 1 else engine_threads(n, args.threads),
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, session_ttl=args.session_ttl,
              max_sessions=args.max_sessions, max_body=args.max_body,
              watch=args.watch if n == 1 else 0.0, header_timeout=args.header_timeout,
              body_timeout=args.body_timeout, max_connections=args.max_connections,
              api_keys=keys, cors_origins=args.cors_origin, store=store,
              denylist_file=args.denylist_file, store_timeout=args.store_timeout,
              denylist_refresh=args.denylist_refresh)
    try:  # a damaged --denylist-file is said here, in one line
        app = serve.create_app(args.model, signals=n == 1, **kw)
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:  # the model is loaded before the server starts: a bad file is said here, in one line
        app.state.server.load_now()
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot load MODEL {args.model!r}: {' '.join(str(e).splitlines())}") from None
    except MemoryError:
        raise CLIError(f"cannot load MODEL {args.model!r}: not enough memory for it") from None
    tls = dict(ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
               proxy_headers=args.proxy_headers, forwarded_allow_ips=args.forwarded_allow_ips)
    if n == 1:
        serve.serve_app(app, host=args.host, port=args.port, **tls)
        return 0
    from fastsasrec.serve import workers
    from fastsasrec.serve.server import run_options

    options = run_options(**tls)
    del app  # loaded here as a check only: each worker loads its own
    workers.run(n, dict(model_or_path=args.model, **kw), args.host, args.port, options, args.watch)
    return 0


def add_parser(sub: Any) -> None:
    """The ``fastsasrec serve`` subcommand."""
    sv = sub.add_parser("serve", help="serve recommendations over HTTP (the live widget)",
                        description="Serve a model over HTTP: recommend, batch, similar items, "
                                    "server-held sessions updated click by click, a denylist, "
                                    "/metrics.  SIGHUP reloads the model file (worker by "
                                    "worker); SIGTERM drains requests in flight.  Needs pip install \"fastsasrec[serve]\".")
    sv.add_argument("model", metavar="MODEL")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="default: 8000")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    sv.add_argument("--threads", type=int, default=None,
                    help="CPU threads of each worker's engine (default: all cores, shared equally "
                         "among the workers)")
    sv.add_argument("--workers", type=int, default=1, metavar="N",
                    help="server processes on the one port, each with its own engine (default: 1; "
                         "more needs --store redis://: sessions must be shared)")
    sv.add_argument("--max-batch", type=int, default=64, help="sessions per engine call (default: 64)")
    sv.add_argument("--max-wait-ms", type=float, default=0.0,
                    help="how long a batch may wait for company under load (default: 0: batches "
                         "form from the requests that arrive while the engine runs; a lone "
                         "request never waits)")
    sv.add_argument("--session-ttl", type=float, default=1800.0,
                    help="seconds a held session lives after its last use (default: 1800)")
    sv.add_argument("--max-sessions", type=int, default=100_000,
                    help="sessions held at most; the least recently used go first (default: 100000)")
    sv.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default: 1 MiB)")
    sv.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a connection has to send a request's head, from opening or from its "
                         "last response; a slower one is closed (default: 10)")
    sv.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds a request has to send its body once its head is in (default: 30)")
    sv.add_argument("--max-connections", type=int, default=None,
                    help="open connections at most; at the cap the one waiting longest for a request "
                         "head is closed first (default: the open-files limit less 64)")
    sv.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                    help="check the model file every SECONDS and reload a new version (default: 0, off)")
    sv.add_argument("--api-key-file", metavar="PATH",
                    help="keys, one a line (# comments): the denylist, /v1/model and /metrics then "
                         "need Authorization: Bearer <key> (default: no key, every route open)")
    sv.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                    help="a browser origin allowed to call the server, e.g. https://shop.example "
                         "(repeatable; default: none)")
    sv.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (uvicorn's)")
    sv.add_argument("--ssl-keyfile", metavar="PEM", help="its private key, if not in --ssl-certfile")
    sv.add_argument("--proxy-headers", action=argparse.BooleanOptionalAction, default=True,
                    help="take the client's address and scheme from X-Forwarded-For/-Proto when the "
                         "connection comes from --forwarded-allow-ips (default: on, uvicorn's)")
    sv.add_argument("--forwarded-allow-ips", metavar="IPS",
                    help="proxies trusted for those headers: addresses or networks, comma-separated, "
                         "or * (default: $FORWARDED_ALLOW_IPS, else 127.0.0.1)")
    sv.add_argument("--store", default="memory", metavar="URL",
                    help="where held sessions and the denylist live: memory (this process; the "
                         "default) or redis://HOST:PORT/DB, shared by every replica (needs pip "
                         "install \"fastsasrec[redis]\")")
    sv.add_argument("--denylist-file", metavar="PATH",
                    help="with --store memory: keep the denylist in this JSON file (written on "
                         "each PUT, read at start), so it survives a restart")
    sv.add_argument("--store-timeout", type=float, default=0.25, metavar="SECONDS",
                    help="the longest a Redis call may take; past it the request is answered 503 "
                         "with Retry-After (default: 0.25)")
    sv.add_argument("--denylist-refresh", type=float, default=1.0, metavar="SECONDS",
                    help="with Redis: how often each replica checks for a denylist change (the "
                         "bound on how long a change takes to reach it; default: 1)")
    sv.set_defaults(func=_serve)
