"""The same model served by LitServe, for ``bench/load.py``'s side-by-side rows.

    .venv/bin/python -m bench.litserve_server --repository models --model digits-mlp
        --port 8001 [--max-batch-size 128] [--max-batch-wait-ms 2]

``POST /predict`` takes snnl's JSON score request (``{"inputs": [[...], ...]}``) and answers
``{"results": [...]}`` as ``/v1/models/{model}/score`` does; LitServe batches requests (the same
max batch and wait as the snnl server it is compared with) and scores each batch with
``snnl.Detector`` in ``predict``, one scoring thread as snnl's default. ``GET /health`` is 200 once
the model is loaded. Needs ``pip install litserve`` (the ``bench`` extra).
"""

import argparse
import itertools
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np


class SnnlAPI(ls.LitAPI):
    """Decode each request's samples, score a batch of requests in one call, split the records."""

    def __init__(self, repository: Path, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repository, self.model = repository, model

    def setup(self, device: str) -> None:
        import torch

        from snnl.model.detector import Detector

        torch.set_num_threads(1)
        self.detector = Detector.load(self.repository, self.model, device="cpu", threads=1)

    def decode_request(self, request: dict[str, Any]) -> np.ndarray:
        return np.asarray(request["inputs"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch: tuple[np.ndarray, list[int]]) -> list[list[dict[str, Any]]]:
        x, sizes = batch
        records = self.detector.score(x).to_records()
        bounds = np.cumsum([0, *sizes])
        return [records[a:b] for a, b in itertools.pairwise(bounds.tolist())]

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"results": output}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.litserve_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--max-batch-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    api = SnnlAPI(
        args.repository,
        args.model,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_batch_wait_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
