"""A real Prometheus for the service tests: deploy's configuration and alert rules, scraping
given ``snnl serve`` processes every second."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def run_prometheus(urls: Sequence[str], folder: Path) -> Iterator[str]:
    """A real Prometheus scraping the servers at ``urls`` every second (job ``snnl``) and
    evaluating deploy's alert rules every second; its URL. Stopped on exit."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    targets = [url.removeprefix("http://") for url in urls]
    config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", folder / "alerts.yml")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    """The result of an instant query; [] while Prometheus is not up or not ready yet (it
    answers 503 in plain text while it starts)."""
    try:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql})
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    body = response.json()
    return body["data"]["result"] if body.get("status") == "success" else []
