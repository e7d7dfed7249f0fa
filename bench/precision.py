"""Reduced-precision products: the error of scores and p-values against float32.

    .venv/bin/python -m bench.precision [--out bench/results] [--threads N]

For each compute dtype (bfloat16, float16) the same samples are scored with the model loaded at
that dtype and at float32 (``Detector.load(..., compute_dtype=...)``), and the differences are
reported: log soft-neighbor score per layer, the nonconformity a(x), p-values, flipped outlier
flags, predictions, and the time of the scoring stage. Two models:

* the default model (models/digits-mlp) on all 1,797 digits, scaled digits and uniform noise;
* an embedding-only model built like ``snnl index`` from 20,000 synthetic clustered rows (d = 128,
  10 classes), scored on 2,000 in-distribution and 2,000 shifted queries.

Writes ``precision.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from snnl.build.from_embeddings import index_embeddings
from snnl.model.detector import ComputeDtype, Detector, ScoreResult

MODELS = Path(__file__).resolve().parents[1] / "models"
DTYPES: tuple[ComputeDtype, ...] = ("bfloat16", "float16")


def _score(det: Detector, x: np.ndarray, embedding: bool) -> tuple[ScoreResult, float]:
    start = time.perf_counter()
    parts = []
    for i in range(0, len(x), 256):
        chunk = x[i : i + 256]
        parts.append(det.score_embeddings({"embedding": chunk}) if embedding else det.score(chunk))
    seconds = time.perf_counter() - start
    return ScoreResult.concatenate(parts), seconds


def compare(
    name: str, load: Callable[[ComputeDtype], Detector], x: np.ndarray, embedding: bool
) -> list[str]:
    base, base_s = _score(load("float32"), x, embedding)
    rows = []
    for dtype in DTYPES:
        got, got_s = _score(load(dtype), x, embedding)
        log_s = np.abs(np.log(got.soft_neighbor_score) - np.log(base.soft_neighbor_score))
        log_s = log_s[np.isfinite(log_s)]
        a = np.abs(got.nonconformity - base.nonconformity)
        p = np.abs(got.p_value - base.p_value)
        rows.append(
            f"| {name} | {dtype} | {len(x)} | {np.median(log_s):.2e} / {log_s.max():.2e} "
            f"| {np.median(a):.2e} / {a.max():.2e} | {np.median(p):.2e} / {p.max():.2e} "
            f"| {int((got.outlier != base.outlier).sum())} "
            f"| {int((got.prediction != base.prediction).sum())} | {base_s / got_s:.2f}x |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.precision", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_digits().data.astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 16, (500, 64)).astype(np.float32)
    samples = np.concatenate([digits, 3.0 * digits[:500], noise])
    lines = compare(
        "digits-mlp (default)",
        lambda dt: Detector.load(MODELS, "digits-mlp", device="cpu", compute_dtype=dt),
        samples,
        embedding=False,
    )
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (10, 128)).astype(np.float32)
    y = rng.integers(0, 10, 20_000)
    x = centers[y] + rng.normal(0, 1, (20_000, 128)).astype(np.float32)
    q = centers[rng.integers(0, 10, 4000)] + rng.normal(0, 1, (4000, 128)).astype(np.float32)
    q[2000:] += rng.normal(0, 1.5, (2000, 128)).astype(np.float32)  # shifted half
    with tempfile.TemporaryDirectory() as repo:
        np.savez(Path(repo) / "emb.npz", x=x, y=y)
        index_embeddings(Path(repo) / "emb.npz", repo, "synthetic", device="cpu")
        lines += compare(
            "synthetic index (N = 17,000 reference rows)",
            lambda dt: Detector.load(repo, "synthetic", device="cpu", compute_dtype=dt),
            q,
            embedding=True,
        )
    text = [
        "# Reduced-precision products against float32",
        "",
        "`.venv/bin/python -m bench.precision`. Absolute differences, median / max over the "
        "samples; flips = samples whose outlier flag (alpha of the manifest) or prediction "
        "changed; speed-up = float32 time / dtype time of the whole scoring call (1 thread).",
        "",
        "| model | dtype | samples | abs diff log s_l | abs diff a(x) | abs diff p-value "
        "| outlier flips | prediction flips | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
