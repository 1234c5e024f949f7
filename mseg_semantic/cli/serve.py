"""``mseg serve``: the segmentation model as an HTTP service (FastAPI on uvicorn) with a page for the browser.

The cheap checks (options, model name, preset, the port) come first and fail as one line; then the socket is bound
(so a port in use is a clear error, and ``--port 0`` takes a free one, printed), then uvicorn starts and the model
loads on a thread of its own (``/readyz`` answers 503 until it has). No file is written: the server holds nothing
that a restart after ``kill -9`` would have to clean up.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.demo import GPU_IO_WORKERS
from mseg_semantic.cli.modelargs import ModelSpec, add_config_arguments, add_model_arguments, model_spec
from mseg_semantic.errors import InputError
from mseg_semantic.optional import require
from mseg_semantic.presets import DEFAULT_PRESET

#: The environment variable that gives the API key when --api-key does not.
API_KEY_ENV = "MSEG_API_KEY"
DEFAULTS = {
    "max_batch": 4,
    "max_wait_ms": 10.0,
    "max_queue": 64,
    "max_pixels": 40_000_000,
    "max_body_mb": 25.0,
    "link_ttl": 300.0,
}


#: The batching and limit options: flag (its DEFAULTS key), type, metavar, help.
_LIMITS = (
    ("--max-batch", int, "N", "requests of the same size class run together, up to N (default: %(default)s); on a "
     "GPU their windows share forward passes (--batch-windows N)"),
    ("--max-wait-ms", float, "T", "how long the oldest waiting request waits for others to fill its batch "
     "(default: %(default)s ms)"),
    ("--max-queue", int, "Q", "requests admitted at once (uploading, waiting or running); more get 503 with "
     "Retry-After (default: %(default)s)"),
    ("--max-pixels", int, "P", "largest image, in pixels, read from the image's header before decoding; larger: 413 "
     "(default: %(default)s)"),
    ("--max-body-mb", float, "MB", "largest request body; larger: 413 (default: %(default)s MB)"),
    ("--link-ttl", float, "S", "seconds the outputs of a ?links=true answer stay available (default: %(default)s; "
     "kept in memory)"),
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "serve",
        description="Serve a segmentation model over HTTP: POST /v1/segment takes an image (raw body or multipart "
        "field 'image') and answers JSON with the class shares and the outputs asked for (label ids PNG, colour PNG, "
        "overlay JPEG, confidence PNG), inline in base64 or as links that expire. GET / is a page to segment images "
        "in a browser; /docs the OpenAPI documentation; /healthz and /readyz the health checks. Concurrent requests "
        "of the same size class run as one batch in one model worker; when --max-queue requests wait, others get "
        '503 with Retry-After. Needs the serve extra: pip install "mseg-semantic[serve]".',
        epilog="examples:\n"
        "  mseg serve                                   # the bundled CamVid-11 model on http://127.0.0.1:8000/\n"
        "  mseg serve --model mseg-3m --fast            # MSeg's universal model; test taxonomies on request\n"
        "  mseg serve --port 0                          # any free port (printed)\n"
        "  MSEG_API_KEY=secret mseg serve --host 0.0.0.0   # reachable from other machines: set a key\n"
        "  mseg serve --max-batch 8 --max-wait-ms 20 --device cuda\n\n"
        "  curl -s --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/segment?outputs=overlay' | head -c 300\n"
        "  curl -s -F image=@photo.jpg 'http://127.0.0.1:8000/v1/segment?outputs=gray&links=true'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine "
        "only; 0.0.0.0 for every interface: set --api-key then)",
    )
    net.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any free port, printed)")
    net.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require this key on every route but /healthz, /readyz, the page's files and the API's description "
        f"(/docs, /openapi.json) (header X-API-Key: KEY or Authorization: Bearer KEY); default: the "
        f"environment variable {API_KEY_ENV}, else no key",
    )
    limits = parser.add_argument_group("batching and limits")
    for flag, kind, metavar, text in _LIMITS:
        key = flag.removeprefix("--").replace("-", "_")
        limits.add_argument(flag, type=kind, default=DEFAULTS[key], metavar=metavar, help=text)
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level; info also logs every request (default: warning)",
    )
    add_model_arguments(parser)
    add_config_arguments(parser, default=DEFAULT_PRESET, zoo_preset=True)
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    """The numeric options, checked before anything loads."""
    for option, value, least in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 1),
        ("--max-pixels", args.max_pixels, 1),
        ("--port", args.port, 0),
    ):
        if value < least:
            raise InputError(f"{option} must be at least {least}, got {value}")
    if args.port > 65535:
        raise InputError(f"--port must lie in 0..65535, got {args.port}")
    for option, number in (
        ("--max-wait-ms", args.max_wait_ms),
        ("--max-body-mb", args.max_body_mb),
        ("--link-ttl", args.link_ttl),
    ):
        if not number >= 0:
            raise InputError(f"{option} must be a number >= 0, got {number}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (reused address: a restart right after a kill binds again), or an
    :class:`InputError` that says what to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; choose another --port (or --port 0 for any free one)" if port else ""
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    _check(args)
    spec = model_spec(args, default_preset=DEFAULT_PRESET, zoo_preset=True)
    for module in ("fastapi", "uvicorn", "python_multipart", "fastapi_offline"):
        require(module, "mseg serve")
    spec.apply_threads()
    sock = bind(args.host, args.port)
    try:
        return _serve(args, spec, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, spec: ModelSpec, sock: socket.socket) -> int:
    import uvicorn

    from mseg_semantic.serve.app import ServeSettings, create_app
    from mseg_semantic.serve.engine import Engine

    config = spec.config
    if spec.device.type == "cuda" and args.batch_windows is None:  # a GPU runs a batch's windows together
        config = config.replace(batch_windows=args.max_batch)
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        link_ttl=args.link_ttl,
        io_workers=GPU_IO_WORKERS if spec.device.type == "cuda" else 1,
    )
    engine = Engine(lambda: spec.load(), config, spec.device, spec.model, args.max_pixels)
    failed: list[str] = []

    def load_failed(message: str) -> None:  # on the loader thread: stop serving, say why
        failed.append(message)
        server.should_exit = True

    app = create_app(engine, settings, on_load_failed=load_failed)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level=args.log_level, timeout_graceful_shutdown=5, access_log=args.log_level in ("info", "debug")
        )
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    key = "; API key required" if settings.api_key else ""
    exposed = "" if settings.api_key or host in ("127.0.0.1", "::1") else " (reachable from other machines: no key!)"
    print(
        f"mseg serve: http://{shown}:{port}/ ({spec.model}, preset {config.name}, {spec.device}{key}){exposed}; "
        "the model is loading (GET /readyz); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])
    if failed:
        raise InputError(f"the model could not be loaded: {failed[0]}")
    return 0
