"""`fpar demo`'s CPU-seconds (user + system, what ``/usr/bin/time`` prints) at two commits, in alternating rounds.

    python benchmarks/bench_demo.py [--base REV] [--head REV] [--rounds 1] [--json benchmarks/results/demo_cpu.json]

Each round runs the whole demo from scratch (data, pre-training, stages 1 and 2, CAMs) once at ``--base`` and once
at ``--head`` (default: HEAD), each from its own copy of the commit's tree (``git archive``), with the Python that
runs this script and ``PYTHONPATH`` pointing at that copy. The CPU-seconds are the demo process's rusage
(``os.wait4``, as ``/usr/bin/time`` reads it: its DataLoader workers included), so other processes on the machine
do not count, though they still slow it (shared caches, memory bandwidth): compare the two commits within one run,
not across runs. Each run's wall time and the table the demo printed are kept too, so that a speed-up that changed
the results shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json  # noqa: E402  (benchmarks/common.py)

REPO = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path) -> str:
    """The tree of ``rev`` unpacked into ``dest``; returns the commit's short hash."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True)
    if sha.returncode != 0:
        sys.exit(f"error: {rev!r} is not a commit of {REPO}")
    archive = dest.with_suffix(".tar")
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    archive.unlink()
    return sha.stdout.strip()


def run_demo(tree: Path, out: Path, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if threads:
        env["FPAR_THREADS"] = str(threads)
    code = "import sys; from fpar.cli import main; sys.exit(main(['demo', '--out', sys.argv[1]]))"
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace").replace("\r", "\n")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: the demo at {tree} failed; its output is in {log}:\n" + text[-2000:])
    table = [ln for ln in text.splitlines() if ln.startswith("| stage")]
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "user_s": round(usage.ru_utime, 1),
        "system_s": round(usage.ru_stime, 1),
        "wall_s": round(wall, 1),
        "table": table,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="FPAR_THREADS for both (default: torch's own)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fpar-bench-demo-"))
    try:
        trees = {"base": work / "base", "head": work / "head"}
        commits = {k: export(getattr(a, k), p) for k, p in trees.items()}
        runs: dict[str, list[dict]] = {"base": [], "head": []}
        for r in range(a.rounds):  # alternating: base then head, every round
            for k in ("base", "head"):
                out = work / f"{k}{r}"
                runs[k].append(run_demo(trees[k], out, a.threads))
                shutil.rmtree(out)  # about 300 MB of frames and 2 GB of checkpoints a run
        med = {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()}
        emit_json(
            {
                "commits": commits,
                "rounds": a.rounds,
                "threads": a.threads or "default",
                "cpu_s_median": med,
                "head_vs_base": round(med["head"] / med["base"], 3),
                "runs": runs,
            },
            a.json,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
