"""Thin protocol adapters: /v1 and /v2 routes, their schemas and codecs, probes, docs."""
