"""``snnl serve``: the HTTP service (docs/service.md) on a model repository, with uvicorn.

Every flag is also an ``SNNL_*`` environment variable; a flag wins over its variable. The
command registers itself with ``snnl`` through the ``snnl.commands`` entry point; the app is
imported only when the command runs, so ``snnl --help`` stays light.
"""

from __future__ import annotations

import argparse

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
    ("log_level", "--log-level", "DEBUG | INFO | WARNING | ERROR (default INFO)"),
    ("scoring_threads", "--scoring-threads", "intra-op threads per model's scorer (default 1)"),
    ("warmup_iterations", "--warmup-iterations", "warm-up scoring calls per model (default 2)"),
    ("gzip_min_bytes", "--gzip-min-bytes", "gzip responses from this size, bytes (default 1024)"),
    ("cors_origins", "--cors-origins", "comma-separated CORS origins (default: none, CORS off)"),
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
    serve(settings)
    return 0
