"""API keys: constant-time comparison, rotation from a file.

Keys come from ``SNNL_API_KEYS`` (fixed for the process) and ``SNNL_API_KEYS_FILE`` (one key a
line, ``#`` comments): the file is looked at again at most once a second and re-read when its
modification time, size or inode changed, and on SIGHUP, so keys rotate without a restart. A file
that turns unreadable or holds a bad key keeps the previous keys, with one log line that names the
file and the line number, never a key.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.security.base import SecurityBase

from service.http.errors import Unauthorized
from service.settings import check_key_strength

logger = logging.getLogger("snnl.service")

KEYS_FILE_CHECK_S = 1.0
"""Longest a removed key keeps working after its file changed (without SIGHUP)."""


def read_keys_file(path: Path) -> tuple[bytes, ...]:
    """The keys of ``path``; ValueError naming the line (never the key) when one is unfit."""
    keys = []
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        try:
            check_key_strength(key)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: {err}") from None
        keys.append(key.encode())
    return tuple(keys)


class ApiKeys:
    """The accepted keys: fixed ones plus those of a keys file, re-read when it changes."""

    def __init__(self, fixed: tuple[bytes, ...], file: Path | None) -> None:
        self._fixed = fixed
        self._file = file
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._from_file: tuple[bytes, ...] = ()
        if file is not None:
            self._seen = _signature(file)
            self._from_file = read_keys_file(file)

    def current(self) -> tuple[bytes, ...]:
        """The keys now accepted (the file is checked at most every ``KEYS_FILE_CHECK_S``)."""
        if self._file is not None and time.monotonic() - self._checked >= KEYS_FILE_CHECK_S:
            self.refresh(force=False)
        return self._fixed + self._from_file

    def refresh(self, *, force: bool = True) -> None:
        """Re-read the keys file if it changed (``force``: in any case, as on SIGHUP)."""
        if self._file is None:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                seen = _signature(self._file)
                if not force and seen == self._seen:
                    return
                keys = read_keys_file(self._file)
            except (OSError, UnicodeDecodeError, ValueError) as err:
                logger.error(
                    "API keys file not reloaded, previous keys kept",
                    extra={"fields": {"file": str(self._file), "error": _reason(err)}},
                )
                return
            self._seen, self._from_file = seen, keys
        logger.info(
            "API keys reloaded", extra={"fields": {"file": str(self._file), "keys": len(keys)}}
        )


def _signature(path: Path) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_mtime_ns, info.st_size, info.st_ino


def _reason(err: Exception) -> str:
    """Why reading failed, without the file's contents (a decode error would quote them)."""
    if isinstance(err, UnicodeDecodeError):
        return f"not ASCII text (byte {err.start})"
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return str(err)


KEY_SCHEMES: tuple[SecurityBase, ...] = (
    HTTPBearer(
        auto_error=False, scheme_name="bearer", description="Header 'Authorization: Bearer KEY'."
    ),
    APIKeyHeader(
        name="X-API-Key", auto_error=False, scheme_name="api_key", description="Header 'X-API-Key'."
    ),
)
"""The two ways to present a key, as OpenAPI security schemes (either one is enough)."""


def presented_key(request: Request) -> bytes | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; None when absent."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    key = request.headers.get("x-api-key")
    return key.encode() if key else None


def check_api_key(request: Request, keys: tuple[bytes, ...]) -> None:
    """Refuse the request unless it presents one of ``keys`` (no keys configured: open).

    Every configured key is compared with ``hmac.compare_digest``, without stopping at a match,
    so the time taken does not tell which key or how much of it matched.
    """
    if not keys:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized(
            "API key required: send header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        )
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key, candidate)
    if not matched:
        raise Unauthorized("API key not accepted (header 'Authorization' or 'X-API-Key')")
