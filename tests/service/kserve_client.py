"""KServe's own REST client (kserve 0.21, ``InferenceRESTClient``, protocol v2) against a running
``snnl serve``, unchanged: run by tests/service/test_kserve.py with the python of
``scripts/kserve-venv`` (an environment of its own: kserve pins protobuf 6).

    python kserve_client.py URL API_KEY MODEL SAMPLES.npy OUT.npz

Checks liveness, readiness and the model's readiness, then infers ``SAMPLES`` (B, ...) float32
twice with ``neighbors`` = 3 and every output requested: JSON tensors both ways, and binary
tensors both ways. Writes each answer's outputs to OUT.npz as ``json.<name>`` and
``binary.<name>``, and the probes' answers as ``probes`` (live, ready, model ready).
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

OUTPUTS = (
    "prediction", "confidence", "nonconformity", "p_value", "outlier",
    "soft_neighbor_score", "layer_p_value", "same_class_neighbors", "neighbor_ids",
)  # fmt: skip


async def main(url: str, key: str, model: str, samples: np.ndarray) -> dict[str, np.ndarray]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    headers = {"Authorization": f"Bearer {key}"}
    probes = [
        await client.is_server_live(url),
        await client.is_server_ready(url),
        await client.is_model_ready(url, model, headers=headers),
    ]
    out: dict[str, np.ndarray] = {"probes": np.array(probes)}
    for binary in (False, True):
        tensor = InferInput("inputs", list(samples.shape), "FP32")
        tensor.set_data_from_numpy(samples, binary_data=binary)
        wanted = [RequestedOutput(name, parameters={"binary_data": binary}) for name in OUTPUTS]
        request = InferRequest(model, [tensor], parameters={"neighbors": 3}, request_outputs=wanted)
        response = await client.infer(url, request, model_name=model, headers=headers)
        assert response.model_name == model, response.model_name
        prefix = "binary" if binary else "json"
        for output in response.outputs:
            out[f"{prefix}.{output.name}"] = output.as_numpy()
    await client._client.aclose()
    return out


if __name__ == "__main__":
    url, key, model, samples_file, out_file = sys.argv[1:]
    result = asyncio.run(main(url, key, model, np.load(samples_file)))
    np.savez(out_file, **result)
