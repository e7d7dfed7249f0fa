"""``snnl serve``: the HTTP service (docs/service.md) on a model repository, with uvicorn.

Every flag is also an ``SNNL_*`` environment variable; a flag wins over its variable. The
command registers itself with ``snnl`` through the ``snnl.commands`` entry point; the app is
imported only when the command runs, so ``snnl --help`` stays light.
"""

from __future__ import annotations

import argparse
import socket

from snnl.errors import InputError

# (setting, flag, help); the setting's environment variable is SNNL_<SETTING>.
FLAGS: tuple[tuple[str, str, str], ...] = (
    ("model_repository", "--repository", "model repository folder (default ./models)"),
    ("host", "--host", "address to bind (default 127.0.0.1)"),
    ("port", "--port", "port to bind (default 8000)"),
    ("device", "--device", "auto | cpu | cuda (default auto)"),
    ("max_batch_size", "--max-batch-size", "most samples per scoring call (default 128)"),
    ("max_batch_wait_ms", "--max-batch-wait-ms", "longest wait to fill a batch, ms (default 2)"),
    ("max_queue", "--max-queue", "most samples waiting per model (default 4096)"),
    ("max_request_bytes", "--max-request-bytes", "largest request body (default 16 MiB)"),
    ("request_timeout_s", "--request-timeout-s", "longest wait for a result, s (default 30)"),
    ("api_keys", "--api-keys", "comma-separated API keys (prefer the environment variable)"),
    ("api_keys_file", "--api-keys-file", "file of API keys, one a line; re-read on change/SIGHUP"),
    ("shutdown_drain_s", "--shutdown-drain-s", "on SIGTERM, serve with /readyz 503 this long (5)"),
    ("shutdown_grace_s", "--shutdown-grace-s", "then let accepted requests finish this long (20)"),
    ("repository_poll_s", "--repository-poll-s", "reload changed models every N s (0: off)"),
    ("log_level", "--log-level", "DEBUG | INFO | WARNING | ERROR (default INFO)"),
    ("scoring_threads", "--scoring-threads", "intra-op threads per model's scorer (default 1)"),
    ("warmup_iterations", "--warmup-iterations", "warm-up scoring calls per model (default 2)"),
    ("gzip_min_bytes", "--gzip-min-bytes", "gzip responses from this size, bytes (default 1024)"),
    ("cors_origins", "--cors-origins", "comma-separated CORS origins (default: none, CORS off)"),
    ("compute_dtype", "--compute-dtype", "float32 | bfloat16 | float16 (default float32)"),
    ("shards", "--shards", "reference shards per model on Ray actors (default 0: none)"),
    ("ray_address", "--ray-address", "Ray cluster of the shards (default: a local one)"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over HTTP",
        description="Serve every model of a repository over HTTP (FastAPI + uvicorn, dynamic "
        "batching, Prometheus metrics at /metrics). Each flag defaults to its SNNL_* "
        "environment variable.",
    )
    for setting, flag, text in FLAGS:
        parser.add_argument(flag, dest=setting, default=None, metavar="VALUE",
                            help=f"{text} [SNNL_{setting.upper()}]")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the settings (flags over environment) and serve until interrupted."""
    from pydantic import ValidationError

    from service import Settings
    from service import run as serve

    overrides = {setting: getattr(args, setting) for setting, _, _ in FLAGS}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        setting = str(first["loc"][0]) if first["loc"] else "settings"
        flag = dict((s, f) for s, f, _ in FLAGS).get(setting, "")
        where = f" ({flag} / SNNL_{setting.upper()})" if flag else ""
        raise InputError(f"setting {setting}{where}: {first['msg']}") from err
    _check_bindable(settings.host, settings.port)
    serve(settings)
    return 0


def _check_bindable(host: str, port: int) -> None:
    """InputError naming --port (or --host) when ``host:port`` cannot be bound, e.g. a busy port.

    uvicorn would report that as a logged traceback-free error and exit 1 only after loading
    the app; probing first gives one plain line and exit 2. The probe binds as uvicorn does
    (SO_REUSEADDR) and releases the port at once.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise InputError(f"--host {host}: cannot resolve ({err.strerror})") from err
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise InputError(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror})"
            ) from err
