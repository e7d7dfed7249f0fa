"""A served model: the manifest schema and verified store, the reference set on its device, the
ONNX runtime, and ``Detector``, which ties them together."""
