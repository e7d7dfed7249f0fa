"""``snnl serve``: the HTTP service (docs/service.md) on a model repository, with uvicorn.

Every flag is also an ``SNNL_*`` environment variable; a flag wins over its variable. The
command registers itself with ``snnl`` through the ``snnl.commands`` entry point; the app is
imported only when the command runs, so ``snnl --help`` stays light.
"""

from __future__ import annotations

import argparse
import socket

from snnl.errors import InputError

# (setting, flag, metavar, help); the setting's environment variable is SNNL_<SETTING>, its
# default is the one of service.defaults.DEFAULTS.
FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("model_repository", "--repository", "DIR", "model repository folder"),
    ("host", "--host", "HOST", "address to bind"),
    ("port", "--port", "PORT", "port to bind (0: any free port)"),
    ("device", "--device", "{auto,cpu,cuda}", "where models run; auto picks cuda when present"),
    ("max_batch_size", "--max-batch-size", "N", "most samples per scoring call"),
    ("max_batch_wait_ms", "--max-batch-wait-ms", "MS", "longest wait to fill a batch"),
    ("max_queue", "--max-queue", "N", "most samples waiting per model"),
    ("max_request_bytes", "--max-request-bytes", "BYTES", "largest request body"),
    ("request_timeout_s", "--request-timeout-s", "S", "longest wait for a result"),
    ("api_keys", "--api-keys", "K1,K2", "API keys (prefer the environment variable)"),
    ("api_keys_file", "--api-keys-file", "FILE", "API keys, one a line; re-read on change/SIGHUP"),
    ("shutdown_drain_s", "--shutdown-drain-s", "S", "on SIGTERM, serve with /readyz 503 this long"),
    ("shutdown_grace_s", "--shutdown-grace-s", "S", "then let accepted requests finish this long"),
    ("repository_poll_s", "--repository-poll-s", "S", "reload changed models every S s (0: off)"),
    ("workers", "--workers", "N", "serving processes on the one port (docs/scaling.md)"),
    ("log_level", "--log-level", "{DEBUG,INFO,WARNING,ERROR}", "level of the JSON log lines"),
    ("scoring_threads", "--scoring-threads", "N", "intra-op threads per model's scorer"),
    ("warmup_iterations", "--warmup-iterations", "N", "warm-up scoring calls per model"),
    ("gzip_min_bytes", "--gzip-min-bytes", "BYTES", "gzip responses from this size"),
    ("cors_origins", "--cors-origins", "O1,O2", "CORS origins ('*': any; none: CORS off)"),
    ("compute_dtype", "--compute-dtype", "{float32,bfloat16,float16}", "dtype of the products"),
    ("shards", "--shards", "N", "reference shards per model on Ray actors (0: none)"),
    ("ray_address", "--ray-address", "ADDR", "Ray cluster of the shards (none: a local one)"),
    ("drift_enabled", "--drift-enabled", "{true,false}", "run the drift monitor per model"),
    ("drift_ert", "--drift-ert", "N", "drift: samples between false alarms (>= 10000)"),
    ("drift_calibration_risk", "--drift-calibration-risk", "P", "drift: delta, in (0, 0.1]"),
    ("drift_levels", "--drift-levels", "P1,P2", "drift: p-value levels watched"),
    ("drift_shifts", "--drift-shifts", "E1,E2", "drift: contamination shares bet on"),
)


def _default(setting: str) -> str:
    """The default of ``setting`` as the help shows it."""
    from service.defaults import DEFAULTS

    value = DEFAULTS[setting]
    if value is None or value == ():
        return "none"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over HTTP",
        description="Serve every model of a repository over HTTP (FastAPI + uvicorn, dynamic "
        "batching, Prometheus metrics at /metrics). Each flag defaults to its SNNL_* "
        "environment variable, then to the default shown.",
    )
    for setting, flag, metavar, text in FLAGS:
        parser.add_argument(
            flag,
            dest=setting,
            default=None,
            metavar=metavar,
            help=f"{text} (default: {_default(setting)}) [SNNL_{setting.upper()}]",
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the settings (flags over environment) and serve until interrupted."""
    from pydantic import ValidationError

    from service import Settings

    overrides = {setting: getattr(args, setting) for setting, *_ in FLAGS}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        setting = str(first["loc"][0]) if first["loc"] else "settings"
        flag = {s: f for s, f, *_ in FLAGS}.get(setting, "")
        where = f" ({flag} / SNNL_{setting.upper()})" if flag else ""
        raise InputError(f"setting {setting}{where}: {first['msg']}") from err
    _check_bindable(settings.host, settings.port)
    if settings.workers > 1:  # the parent stays light: no torch, no app (service.workers)
        from service.workers import supervise

        return supervise(settings)
    from service import run as serve

    return serve(settings)


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
