"""``python -m service``: serve with settings from the ``SNNL_*`` environment variables."""

from __future__ import annotations

from service.app import run
from service.settings import Settings

if __name__ == "__main__":
    run(Settings())
