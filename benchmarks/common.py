"""What every benchmark script shares: printing its result and saving it for `benchmarks/results/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_json(result: dict[str, Any], path: str | Path | None) -> None:
    """Print ``result`` as indented JSON, and write it to ``path`` too (``--json``; folders made) when given."""
    print(json.dumps(result, indent=2))
    write_json(result, path)


def write_json(result: dict[str, Any], path: str | Path | None) -> None:
    """``result`` as indented JSON into ``path`` (folders made); nothing without a path."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
