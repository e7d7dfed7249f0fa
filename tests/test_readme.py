"""Every shell and Python block of README.md runs as written.

The blocks run in order in a scratch copy of the repository (its tracked files, with a link to
this checkout's ``.venv``), so the tour never writes into the tracked ``models/``. Blocks that
start a server (``scripts/run``, ``snnl serve``) run in the background until it answers
``/readyz``; the ``curl`` blocks after them run against it, and it is stopped before the next
server block and at the end (a user keeps both running: the README's second server uses another
port). Two things differ from a user's terminal: ``SNNL_PORT`` is set to a free port, to which
``localhost:8000`` in the blocks is rewritten, and every other port the blocks name
(``localhost:PORT``, ``--port PORT``) is rewritten to a free port of its own. ``scripts/test``
is the one block not run: it runs this test. Blocks that are not meant to run (output, data,
configuration, commands that need a Docker engine or a cluster) are fenced ``text``, ``json`` or
``yaml``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = {"bash", "sh", "python"}
NOT_RUN = {"text", "json", "yaml"}  # output, data and configuration, not commands
SERVER_COMMANDS = ("scripts/run", "snnl serve")
BLOCK_TIMEOUT_S = 600  # generous: a bound, not a timing check (a busy machine is slow)
READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # where the block starts in README.md

    @property
    def commands(self) -> list[str]:
        """The block's non-comment lines, stripped."""
        lines = (line.split("#", 1)[0].strip() for line in self.code.splitlines())
        return [line for line in lines if line]

    @property
    def starts_server(self) -> bool:
        return self.language != "python" and any(
            command.startswith(SERVER_COMMANDS) for command in self.commands
        )


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md, in order."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), match.group(2), line))
    return blocks


def test_every_block_says_whether_it_runs() -> None:
    for block in readme_blocks():
        assert block.language in RUNNABLE | NOT_RUN, (
            f"README.md line {block.line}: fence it as one of {sorted(RUNNABLE | NOT_RUN)}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scratch_copy(target: Path) -> Path:
    """The tracked files of the repository under ``target``, with ``.venv`` linked."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    return target


def _install_is_current() -> bool:
    """Whether scripts/setup would skip the install (so nothing is installed from the copy)."""
    check = subprocess.run(["bash", "scripts/setup", "--check", "all"], cwd=ROOT, check=False)
    return check.returncode == 0


PORT = re.compile(r"(?<=localhost:)\d{4,5}\b|(?<=--port )\d{4,5}\b")


class Ports:
    """The README's ports mapped to free ones: 8000 to ``SNNL_PORT``, any other to its own."""

    def __init__(self, default: int):
        self.default = default
        self.mapped = {"8000": default}

    def rewrite(self, code: str) -> str:
        return PORT.sub(lambda match: str(self.of(match.group())), code)

    def of(self, port: str) -> int:
        if port not in self.mapped:
            self.mapped[port] = _free_port()
        return self.mapped[port]

    def served_by(self, block: Block) -> int:
        """The port a server block listens on: its ``--port``, else ``SNNL_PORT``."""
        named = re.search(r"--port (\d{4,5})\b", block.code)
        return self.of(named.group(1)) if named else self.default


class Server:
    """A server block running in the background, in its own process group."""

    def __init__(self, block: Block, cwd: Path, env: dict[str, str], ports: Ports, log: Path):
        self.block, self.port, self.log = block, ports.served_by(block), log
        self.process = subprocess.Popen(
            ["bash", "-c", ports.rewrite(block.code)],
            cwd=cwd,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"README.md line {self.block.line}: server exited: {self._tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        pytest.fail(f"README.md line {self.block.line}: not ready in time: {self._tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    if not _install_is_current():
        pytest.fail("the .venv install is not current (scripts/setup --check): run scripts/setup")
    repo = _scratch_copy(tmp_path / "repo")
    port = _free_port()
    ports = Ports(port)
    env = dict(os.environ, SNNL_PORT=str(port))
    env["PATH"] = f"{repo / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    server: Server | None = None
    skipped = []
    try:
        for block in readme_blocks():
            if block.language not in RUNNABLE:
                continue
            if block.commands[:1] == ["scripts/test"]:
                skipped.append(block)
                continue
            if block.starts_server:
                if server is not None:
                    server.stop()
                server = Server(block, repo, env, ports, tmp_path / f"server-{block.line}.log")
                server.wait_ready()
                continue
            if block.language == "python":
                argv = [str(repo / ".venv" / "bin" / "python"), "-c", block.code]
            else:
                argv = ["bash", "-euo", "pipefail", "-c", ports.rewrite(block.code)]
            done = subprocess.run(
                argv, cwd=repo, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
            )
            assert done.returncode == 0, (
                f"README.md line {block.line} ({block.language}) exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
            if "curl" in block.code:
                assert '"detail"' not in done.stdout, done.stdout  # an HTTP error body
    finally:
        if server is not None:
            server.stop()
    assert len(skipped) == 1, "only the scripts/test block may be left out"
    assert (repo / "runs" / "tour" / "models" / "digits-0to4" / "manifest.json").is_file()
    tracked_models = {path.parent for path in (ROOT / "models").glob("*/manifest.json")}
    copied_models = {path.parent for path in (repo / "models").glob("*/manifest.json")}
    assert {m.name for m in copied_models} == {m.name for m in tracked_models}, (
        "the README wrote a model into the committed models/ folder"
    )
