"""A small valid manifest for the repository tests."""

from __future__ import annotations

from snnl.model.manifest import LayerSpec, Manifest


def manifest(name: str = "emb", **changes: object) -> Manifest:
    fields = {
        "name": name,
        "version": "1",
        "created": "2024-01-01T00:00:00Z",
        "input_shape": None,
        "input_dtype": None,
        "preprocessing": "none",
        "class_names": ["a", "b"],
        "layers": [
            LayerSpec(
                name="embedding", dim=4, distance="cosine", temperature=0.1, reference_size=10
            )
        ],
        "calibration_size": 5,
    }
    fields.update(changes)
    return Manifest.model_validate(fields)
