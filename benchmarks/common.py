"""What every benchmark script shares: printing its result and saving it for `benchmarks/results/`, with the machine
and the commit that produced it (the same code runs 1.5-2.5x apart on the hosts sessions draw)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def emit_json(result: dict[str, Any], path: str | Path | None) -> None:
    """Print ``result`` as indented JSON, and write it to ``path`` too (``--json``; folders made) when given."""
    print(json.dumps(result, indent=2))
    write_json(result, path)


def write_json(result: dict[str, Any], path: str | Path | None) -> None:
    """``result`` as indented JSON into ``path`` (folders made), with a ``machine`` entry added where it has none
    (`machine`); nothing without a path."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**result, "machine": result.get("machine") or machine()}, indent=2) + "\n")


def machine() -> dict[str, Any]:
    """Where a figure was measured: the CPU's model and the instruction set torch's kernels use (oneDNN's
    convolutions run about 1.6x slower with AVX2 than with AVX-512), cores, torch, the GPU if one is used, the
    fpar commit (``+dirty`` with uncommitted changes) and the time."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["commit"] = _commit()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return info


def _commit() -> str | None:
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "-uno")
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
