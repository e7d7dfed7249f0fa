"""Compare two model folders within stated tolerances (``make models-check``).

    python -m snnl.build.compare EXPECTED_DIR ACTUAL_DIR

A model folder rebuilt from the same run on another machine can differ from the committed one in
the last bits of its floats (BLAS and ONNX Runtime round sums differently by CPU and thread
count), so its sha256s differ although the model is the same. This compares what the files mean:

* ``manifest.json``: every non-float field exactly (names, shapes, sizes, versions, the
  provenance; the ``files`` checksums are left out), every float with relative tolerance
  ``FLOAT_RTOL`` (and ``FLOAT_ATOL`` near zero);
* ``calibration.safetensors`` and ``reference.safetensors``: the same tensor names, shapes and
  dtypes; integer tensors exactly; float tensors ``np.allclose`` at ``FLOAT_RTOL`` / ``FLOAT_ATOL``,
  float16 ones at one float16 rounding step (``HALF_RTOL``, ``HALF_ATOL``);
* ``model.onnx``: byte for byte (the export of a given network is deterministic).

The tolerances are far below any change of the model or of the method (a retrained network or
another temperature moves these numbers by percents) and far above float rounding (1e-7 relative).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from snnl.model.manifest import CALIBRATION_FILE, MANIFEST_FILE, ONNX_FILE, REFERENCE_FILE

FLOAT_RTOL = 1e-4
FLOAT_ATOL = 1e-6
HALF_RTOL = 2.0**-10  # one float16 rounding step, relative
HALF_ATOL = 2.0**-14  # the smallest normal float16


def compare_model_folders(expected: Path, actual: Path) -> list[str]:
    """The differences beyond the tolerances between the model folders ``expected`` and
    ``actual``, one line each (empty: the same model)."""
    problems: list[str] = []
    for name in (MANIFEST_FILE, ONNX_FILE, REFERENCE_FILE, CALIBRATION_FILE):
        a, b = expected / name, actual / name
        if a.exists() != b.exists():
            problems.append(f"{name}: present in only one of {expected} and {actual}")
        elif not a.exists():
            continue
        elif name == MANIFEST_FILE:
            problems += [f"{name}: {line}" for line in _compare_manifests(a, b)]
        elif name == ONNX_FILE:
            if a.read_bytes() != b.read_bytes():
                problems.append(f"{name}: the bytes differ")
        else:
            problems += [f"{name}: {line}" for line in _compare_tensors(a, b)]
    return problems


def _compare_manifests(a: Path, b: Path) -> list[str]:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    left.pop("files", None)
    right.pop("files", None)
    return list(_compare_values(left, right, "manifest"))


def _compare_values(left: Any, right: Any, where: str) -> Iterator[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        if left.keys() != right.keys():
            yield f"{where}: keys {sorted(left)} != {sorted(right)}"
            return
        for key in left:
            yield from _compare_values(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            yield f"{where}: {len(left)} items != {len(right)}"
            return
        for i, (x, y) in enumerate(zip(left, right, strict=True)):
            yield from _compare_values(x, y, f"{where}[{i}]")
    elif isinstance(left, float) and isinstance(right, float):
        if not math.isclose(left, right, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL):
            yield f"{where}: {left!r} != {right!r} (rtol {FLOAT_RTOL:g})"
    elif type(left) is not type(right) or left != right:
        yield f"{where}: {left!r} != {right!r}"


def _compare_tensors(a: Path, b: Path) -> Iterator[str]:
    left, right = load_file(str(a)), load_file(str(b))
    if left.keys() != right.keys():
        yield f"tensors {sorted(left)} != {sorted(right)}"
        return
    for key in sorted(left):
        x, y = left[key], right[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            yield f"{key}: {x.dtype}{list(x.shape)} != {y.dtype}{list(y.shape)}"
        elif not np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, y):
                yield f"{key}: {int((x != y).sum())} of {x.size} entries differ"
        else:
            half = x.dtype == np.float16
            rtol, atol = (HALF_RTOL, HALF_ATOL) if half else (FLOAT_RTOL, FLOAT_ATOL)
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            if not np.allclose(x64, y64, rtol=rtol, atol=atol):
                worst = float(np.max(np.abs(x64 - y64)))
                yield f"{key}: max |difference| {worst:.3g} beyond rtol {rtol:g}, atol {atol:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("expected", type=Path, help="the model folder to compare against")
    parser.add_argument("actual", type=Path, help="the model folder to check")
    args = parser.parse_args(argv)
    problems = compare_model_folders(args.expected, args.actual)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.actual} matches {args.expected} within the stated tolerances")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
