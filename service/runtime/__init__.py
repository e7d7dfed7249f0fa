"""Served models and their lifecycle, the dynamic batcher and the batch runner."""
