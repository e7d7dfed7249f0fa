"""Worker processes: ``snnl serve --workers N`` runs N serving processes on one port.

The parent binds the port once and starts N workers (``multiprocessing``'s spawn: fresh
interpreters, no forked torch threads); each runs the whole service (``service.app``) on an
inherited copy of the listening socket, so the kernel hands each new connection to whichever
worker accepts first. The parent serves no request; it forwards signals, restarts a worker that
dies, and owns a run folder it creates and removes:

- ``metrics/``: ``PROMETHEUS_MULTIPROC_DIR`` of the workers; ``/metrics`` on any worker shows the
  aggregate (``service.http.metrics``). A worker that exits is marked dead there.
- ``ready/``: one empty file per worker that has loaded the repository and is not shutting down.
  ``/readyz`` on any worker is 200 only when its own state is ready and all N workers are.

Each worker loads every model itself: the reference sets are memory-mapped files
(``snnl.model.reference``), so their pages are shared through the page cache, while each worker
has its own model weights, batchers and scoring threads (each batches its own traffic).

Signals to the parent: SIGHUP is forwarded to every worker (each re-reads the API keys file and
reloads changed models); ``POST /v1/admin/reload`` on one worker reloads that one and sends
SIGHUP to the parent, which forwards it to all. SIGTERM and SIGINT are forwarded (each worker
drains as a single process does: ``service.app``); the parent closes its copy of the socket and
exits once every worker has, 0 when each did. Workers are in their own process group (a Ctrl-C
in a terminal reaches them once, through the parent) and get SIGTERM if the parent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger("snnl.service")
STARTUP_FAILURES = (2, 3)
"""Exit statuses of a worker that could not start (2: bad settings or repository, as ``snnl``
exits; 3: the server did not start): the parent stops the others and exits with it."""
FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Peers:
    """What one worker knows of the others: the run folder and the parent."""

    run_dir: Path
    workers: int
    parent: int

    @property
    def _ready(self) -> Path:
        return self.run_dir / "ready" / str(os.getpid())

    def mark_ready(self) -> None:
        """This worker has loaded the repository."""
        self._ready.touch()

    def mark_not_ready(self) -> None:
        """This worker is shutting down."""
        self._ready.unlink(missing_ok=True)

    def not_ready(self) -> str | None:
        """Why the service is not ready as a whole (some worker is not), or None."""
        ready = sum(1 for _ in (self.run_dir / "ready").iterdir())
        if ready < self.workers:
            return f"not ready: {ready} of {self.workers} workers ready"
        return None

    def reload_all(self) -> None:
        """Have every worker reload (the parent forwards SIGHUP to all)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.parent, signal.SIGHUP)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def work(settings: Settings, listener: socket.socket, peers: Peers) -> None:
    """One worker: the whole service on the inherited socket (the target of each process)."""
    os.setpgid(0, 0)
    _die_with_parent()
    if os.getppid() != peers.parent:  # the parent died before prctl
        return
    from service.app import create_app, serve
    from snnl.errors import InputError, RepositoryError

    try:
        app = create_app(settings, peers=peers)
    except (InputError, RepositoryError) as err:
        print(f"snnl serve: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(app, settings, sockets=[listener])


def _signal_all(processes: list[BaseProcess], sig: int) -> None:
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)


def supervise(settings: Settings) -> int:
    """Start ``settings.workers`` workers on one port, forward signals, restart the dead; the
    exit status once all have stopped after SIGTERM or SIGINT."""
    import uvicorn
    from prometheus_client.multiprocess import mark_process_dead

    from service.http.logging import configure_logging, uvicorn_log_config

    configure_logging(settings.log_level)
    config = uvicorn.Config(
        "service.app:create_app",
        host=settings.host,
        port=settings.port,
        log_config=uvicorn_log_config(settings.log_level),
    )
    run_dir = Path(tempfile.mkdtemp(prefix="snnl-serve-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    (run_dir / "ready").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    peers = Peers(run_dir, settings.workers, os.getpid())
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _: received.append(s)) for sig in FORWARDED}
    context = multiprocessing.get_context("spawn")
    listener: socket.socket | None = None
    processes: list[BaseProcess] = []
    status = 0
    try:
        listener = config.bind_socket()

        def start() -> BaseProcess:
            process = context.Process(
                target=work, args=(settings, listener, peers), name="snnl-worker"
            )
            process.start()
            return process

        processes = [start() for _ in range(settings.workers)]
        logger.info(
            "workers started",
            extra={
                "fields": {
                    "workers": [p.pid for p in processes],
                    "parent": os.getpid(),
                    "run_dir": str(run_dir),
                }
            },
        )
        stopping = False
        while processes:
            time.sleep(0.1)
            for sig in received[:]:
                received.remove(sig)
                if sig != signal.SIGHUP and not stopping:
                    stopping = True
                    listener.close()  # the port closes once every worker closed its copy
                _signal_all(processes, sig)
            for process in [p for p in processes if p.exitcode is not None]:
                assert process.pid is not None
                mark_process_dead(process.pid, str(metrics_dir))
                (run_dir / "ready" / str(process.pid)).unlink(missing_ok=True)
                code = process.exitcode
                if not stopping and code not in STARTUP_FAILURES:
                    logger.error(
                        "worker died: restarting it",
                        extra={"fields": {"pid": process.pid, "exit_status": code}},
                    )
                    processes[processes.index(process)] = start()
                    continue
                processes.remove(process)
                if code:
                    status = status or (code if code in STARTUP_FAILURES else 1)
                if not stopping:  # a worker could not start: the others would not either
                    logger.error("a worker failed to start: stopping the others")
                    stopping = True
                    listener.close()
                    _signal_all(processes, signal.SIGINT)
    finally:
        for process in processes:
            process.kill()
            process.join()
        if listener is not None:
            listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)
    return status
