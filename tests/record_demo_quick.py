"""Record what `fpar demo --quick` writes on this CPU into tests/data/demo_quick_reference.json.

    FPAR_THREADS=1 python tests/record_demo_quick.py [--why "what changed"]

The fixture holds one recording per CPU (oneDNN picks its kernels, and so the float rounding, by the CPU's
features; after the pre-training and two short stages on six test videos, a CPU with other kernels ends a video or
two apart). `tests/test_engine.py::test_demo_quick_end_to_end_matches_the_recorded_metrics` is bit-exact on a CPU
that has a recording. Run this on a new CPU to add one, or after a deliberate change of the arithmetic (then
delete the other CPUs' recordings: they no longer hold). Not collected by pytest (the name has no ``test_``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import REFERENCE, cpu_signature  # noqa: E402

# what the test compares: everything the run writes except timings and paths
SKIP = {"time_s", "train_time_s", "run", "split", "selected_by"}


def record() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FPAR_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "fpar", "demo", "--out", f"{tmp}/d", "--quick"], env=env, check=True)
        out = {}
        for stage in ("stage1", "stage2"):
            run = Path(tmp) / "d" / "runs" / stage
            summary = json.loads((run / "summary.json").read_text())
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            out[stage] = {
                "summary": {k: v for k, v in summary.items() if k not in SKIP},
                "metrics": [{k: v for k, v in r.items() if k not in SKIP} for r in rows],
            }
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--why", default="", help="why it was recorded (kept in the file)")
    a = ap.parse_args()
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    if ref.get("torch") not in (None, torch.__version__):
        sys.exit(f"{REFERENCE}: recorded with torch {ref['torch']}, this is {torch.__version__}: delete it first")
    cpu = cpu_signature()
    recordings = [r for r in ref.get("recordings", []) if r["cpu"] != cpu]
    recordings.append({"cpu": cpu, "why": a.why, **record()})
    ref = {**ref, "torch": torch.__version__, "threads": 1, "command": "FPAR_THREADS=1 fpar demo --quick"}
    ref["recordings"] = recordings
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{REFERENCE}: {len(recordings)} recording(s); this CPU: {cpu}")


if __name__ == "__main__":
    main()
