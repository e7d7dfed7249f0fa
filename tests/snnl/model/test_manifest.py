"""The manifest schema: validation on load and on write, the nonconformity section."""

from __future__ import annotations

import pytest

from snnl.model.manifest import CALIBRATION_FILE, REFERENCE_FILE, LayerSpec, Manifest
from tests.snnl.model._manifests import manifest as _manifest


def test_manifest_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        layer = LayerSpec(name="h", dim=2, distance="cosine", temperature=1.0, reference_size=3)
        _manifest(layers=[layer, layer])
    with pytest.raises(ValueError, match="together"):
        _manifest(input_shape=[64])
    with pytest.raises(ValueError, match="files must be exactly"):
        _manifest(files={REFERENCE_FILE: "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        _manifest(files={REFERENCE_FILE: "x", CALIBRATION_FILE: "0" * 64})
    with pytest.raises(ValueError):
        _manifest(created="yesterday")
    assert (
        _manifest().embedding_only
        and not _manifest(input_shape=[8, 8], input_dtype="float32").embedding_only
    )


def test_nonconformity_section() -> None:
    assert _manifest().nonconformity.kind == "neg-log-score"  # manifests written before it
    term = {"layer": "embedding", "distance": "euclidean", "temperature": 2.0, "mean": -1.5}
    mass = {"kind": "neighbor-mass", "perplexity": 30, "terms": [{**term, "std": 0.5}]}
    manifest = _manifest(nonconformity=mass)
    assert manifest.nonconformity.kind == "neighbor-mass"
    assert Manifest.model_validate_json(manifest.to_json()) == manifest
    assert manifest.nonconformity.terms[0].floor is None  # two-sided unless a floor is stored
    one_sided = {**term, "std": 0.5, "floor": -2.25}
    both = _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5}, one_sided]})
    assert Manifest.model_validate_json(both.to_json()) == both
    assert [t.floor for t in both.nonconformity.terms] == [None, -2.25]
    assert [t.weight for t in both.nonconformity.terms] == [1.0, 1.0]  # unweighted unless stored
    weighted = _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5, "weight": 2.5}]})
    assert Manifest.model_validate_json(weighted.to_json()) == weighted
    assert weighted.nonconformity.terms[0].weight == 2.5
    for bad_weight in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5, "weight": bad_weight}]})
    with pytest.raises(ValueError, match="two-sided"):
        _manifest(nonconformity={**mass, "terms": [one_sided]})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="floor"):
            _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5, "floor": bad}]})
    with pytest.raises(ValueError, match="not served"):
        _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5, "layer": "fc9"}]})
    with pytest.raises(ValueError, match="std"):
        _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.0}]})
    with pytest.raises(ValueError, match="terms"):
        _manifest(nonconformity={**mass, "terms": []})
    with pytest.raises(ValueError):
        _manifest(nonconformity={"kind": "mystery"})
