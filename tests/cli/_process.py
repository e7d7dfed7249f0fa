"""Run the real ``snnl`` command in a subprocess (as a user would), for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_snnl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m snnl.cli ARGS`` in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "snnl.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
