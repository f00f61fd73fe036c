"""Kill a tiny training at 20 points (FPAR_FAULT) and check each resume ends bit-identical to an uninterrupted run.

    python scripts/fault_matrix.py [--points batch:1,eval:3,...]

Prints one line per point and exits 1 if any differs. The test suite runs four of these points
(tests/test_faults.py); this script runs the rest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fpar.data.synth import synthesize  # noqa: E402
from tests.test_faults import fpar, kill_and_resume, outcome, train_args  # noqa: E402

# the tiny run: 3 epochs of 2 batches, one evaluation batch per epoch, at least 8 atomic writes
POINTS = [f"batch:{n}" for n in (1, 2, 3, 4, 5, 6)] + [f"eval:{n}" for n in (1, 2, 3)]
POINTS += [f"tmp_written:{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8)] + [f"metrics_appended:{n}" for n in (1, 2, 3)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=",".join(POINTS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "tiny"
        synthesize(root, preset="tiny", seed=0)
        r = fpar(train_args(root, tmp / "ref"))
        if r.returncode:
            print(r.stderr)
            return 1
        ref_w, ref_rows = outcome(tmp / "ref")
        bad = 0
        for point in a.points.split(","):
            out = tmp / point.replace(":", "_")
            try:
                rc, err = kill_and_resume(root, out, point, in_process=False)
            except AssertionError as e:  # the point is never reached by this run: a wrong point, not a bad resume
                print(f"{point:<20} NOT REACHED: {e}")
                bad += 1
                continue
            w, rows = outcome(out) if rc == 0 else (None, None)
            ok = w is not None and all(torch.equal(w[k], ref_w[k]) for k in ref_w) and rows == ref_rows
            ok = ok and not list(out.glob(".*.tmp"))
            bad += not ok
            print(f"{point:<20} {'identical' if ok else 'DIFFERENT: ' + err[-300:]}")
    print(f"{len(a.points.split(',')) - bad} identical, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
