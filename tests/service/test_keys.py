"""API keys: several at once, rotated without a restart through a keys file (re-read when it
changes, and on SIGHUP), a broken file that keeps the previous keys, and no key ever in the log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from _server import SNNL, Server, start_server

ENV_KEY = "env-key-0123456789abcdef"
KEY_A, KEY_B, KEY_C, KEY_D = (f"file-key-{c * 16}" for c in "abcd")
WRONG = "wrong-key-0123456789abcdef"
SCORE = "/v1/models/digits-mlp/score"
BODY = {"inputs": [[0.0] * 64]}


def accepted(server: Server, key: str) -> bool:
    response = httpx.post(f"{server.url}{SCORE}", json=BODY, headers={"X-API-Key": key})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# rotated by the operator\n{KEY_A}\n\n  {KEY_B}  \n")
    return path


@pytest.fixture(scope="module")
def server(repository: Path, keys_file: Path) -> Iterator[Server]:
    log = keys_file.parent / "server.log"
    with start_server(
        repository, log, api_keys=ENV_KEY, api_keys_file=str(keys_file), warmup_iterations="1"
    ) as running:
        yield running


def test_every_configured_key_is_accepted_and_others_are_not(server: Server) -> None:
    assert all(accepted(server, key) for key in (ENV_KEY, KEY_A, KEY_B))
    assert not accepted(server, WRONG)
    evaluate = httpx.post(f"{server.url}/v1/models/digits-mlp/evaluate", json={})
    assert evaluate.status_code == 401


def test_keys_rotate_when_the_file_changes(server: Server, keys_file: Path) -> None:
    keys_file.write_text(f"{KEY_B}\n{KEY_C}\n")
    wait_for(lambda: accepted(server, KEY_C) and not accepted(server, KEY_A), "rotation")
    assert accepted(server, KEY_B) and accepted(server, ENV_KEY)


def test_sighup_rereads_a_file_whose_change_is_invisible(server: Server, keys_file: Path) -> None:
    """Same size, same inode, same modification time: only SIGHUP can tell."""
    before = os.stat(keys_file)
    keys_file.write_text(f"{KEY_B}\n{KEY_D}\n")  # KEY_D is as long as KEY_C
    os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(1.5)  # past the file check interval: the change is not seen without SIGHUP
    assert not accepted(server, KEY_D)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: accepted(server, KEY_D), "SIGHUP reload")
    assert not accepted(server, KEY_C)


def test_a_broken_keys_file_keeps_the_previous_keys(server: Server, keys_file: Path) -> None:
    keys_file.write_text(f"{KEY_A}\nshort\n")
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "API keys file not reloaded" in server.log.read_text(), "error line")
    assert accepted(server, KEY_D) and not accepted(server, KEY_A)
    line = next(x for x in server.log_lines() if "API keys file not reloaded" in x)
    assert f"{keys_file}, line 2: each API key needs at least 16 characters" in line
    assert "short" not in line


def test_no_key_is_ever_logged(server: Server) -> None:
    """Every key used above, accepted or not, is absent from the log and the metrics."""
    accepted(server, WRONG)
    text = server.log.read_text() + httpx.get(f"{server.url}/metrics").text
    for key in (ENV_KEY, KEY_A, KEY_B, KEY_C, KEY_D, WRONG):
        assert key not in text
        assert key[-12:] not in text


def test_a_bad_keys_file_at_start_up_is_one_line_and_exit_2(
    repository: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "keys"
    bad.write_text(f"{KEY_A}\nkey with spaces in it\n")
    done = subprocess.run(
        [SNNL, "serve", "--repository", str(repository), "--api-keys-file", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"{bad}, line 2: API keys may not contain whitespace" in done.stderr
    assert KEY_A not in done.stderr and "spaces" not in done.stderr
