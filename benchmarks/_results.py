"""Writing a benchmark's results: one place for the JSON + markdown files under a stem."""
from __future__ import annotations

import json
import os
import platform

import torch


def write_results(stem: str, payload: dict, markdown: str) -> None:
    """Write ``stem.json`` (``payload`` plus platform and torch version) and ``stem.md``."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    record = {"platform": platform.platform(), "torch": torch.__version__, **payload}
    with open(stem + ".json", "w") as fh:
        json.dump(record, fh, indent=1, default=float)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown)
