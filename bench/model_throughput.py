"""Load time and in-process scoring throughput of a model of the repository.

    .venv/bin/python -m bench.model_throughput [--repository models] [--model digits-mlp]
        [--batch-sizes 1,64,256] [--seconds 3] [--threads 1] [--device auto]

Load time: Detector.load (checksums, reference to the device, ONNX session) after a first,
discarded load (imports and ONNX Runtime's one-time setup). Throughput: samples/s of
Detector.score on batches of digits test samples (repeated to fill a batch), after a warm-up,
with the mean share of each stage (forward, neighbors, calibrate).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from snnl.model.detector import Detector
from snnl.training.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.model_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repository", default="models")
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    Detector.load(args.repository, args.model, device=args.device, threads=args.threads)
    loads = []
    for _ in range(5):
        start = time.perf_counter()
        det = Detector.load(args.repository, args.model, device=args.device, threads=args.threads)
        loads.append(time.perf_counter() - start)
    print(
        f"{det.name} v{det.version} on {det.device} ({det.provider or det.backend}), layers "
        f"{', '.join(f'{n}:{det.reference_sizes[n]}' for n in det.layers)}; "
        f"load {statistics.median(loads) * 1e3:.1f} ms (median of 5)"
    )
    x = load_dataset("digits").x
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rows = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
        for _ in range(3):
            det.score(rows)
        count, stages = 0, {"forward": 0.0, "neighbors": 0.0, "calibrate": 0.0}
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            result = det.score(rows)
            count += 1
            for stage, seconds in result.timings.items():
                stages[stage] += seconds
        elapsed = time.perf_counter() - start
        total = sum(stages.values())
        shares = ", ".join(f"{s} {100 * v / total:.0f}%" for s, v in stages.items())
        print(
            f"B={batch:4d}: {count * batch / elapsed:9.0f} samples/s, "
            f"{elapsed / count * 1e3:7.2f} ms/batch ({shares})"
        )


if __name__ == "__main__":
    main()
