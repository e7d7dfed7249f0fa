"""ASGI plumbing: request log and metrics, errors, API keys, body limits, direct routes."""
