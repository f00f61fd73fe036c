"""A sweep shared by several processes through a real PostgreSQL server (`.ci/run` starts one and exports
``FPAR_TEST_POSTGRES_URL``; without it these tests skip, and fail when ``CI`` is set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fpar.experiments.sweep import Ledger, _alive, run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE1 = CONFIGS / "ego_rnn_stage1.yaml"
LRS = (1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3)


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("FPAR_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI is set but FPAR_TEST_POSTGRES_URL is not: .ci/run starts a PostgreSQL server for this test")
        pytest.skip("no PostgreSQL server: set FPAR_TEST_POSTGRES_URL (.ci/run starts one)")
    return url


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the timings."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_two_workers_share_a_postgres_sweep_and_take_over_a_killed_trial(pg_url, tiny_overrides, tmp_path):
    """Two `fpar sweep --storage postgresql+psycopg://...` processes on one 4-trial grid: one is SIGKILLed in the
    middle of its first trial (after epoch 2's metrics row, before its checkpoint); the other trains its own trials,
    waits for that one, takes it over from its last.pt and finishes it. Every trial is trained once, and the results
    equal a SQLite sweep of the same grid."""
    name = f"pg{uuid.uuid4().hex[:8]}"  # a study of its own on a server that may hold earlier ones
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: {name}\nbase: {STAGE1}\ngrid: {{optim.lr: {list(LRS)}}}\n")
    ov = [*tiny_overrides, "train.epochs=3"]
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "fpar", "sweep", str(grid), "--storage", pg_url, "--out", str(out), *ov]
    env = {**os.environ, "FPAR_THREADS": "1"}
    killed = subprocess.Popen(
        [*cmd, "--stale-after", "20"],
        env={**env, "FPAR_FAULT": "metrics_appended:2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)  # let the first worker claim a trial before the second starts
    other = subprocess.Popen([*cmd, "--stale-after", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        killed_out = killed.communicate(timeout=120)[0].decode()
        other_out = other.communicate(timeout=120)[0].decode()
    finally:
        for p in (killed, other):
            if p.poll() is None:
                p.kill()
    assert killed.returncode == -9, killed_out[-2000:]  # the fault point SIGKILLed it
    assert other.returncode == 0, other_out[-3000:]
    trials = [f"lr{lr:.0e}-seed0" for lr in LRS]
    for t in trials:
        assert (out / t / "summary.json").is_file(), (t, other_out[-2000:])
    # the killed worker's trial: interrupted once, then resumed (not restarted) by the other worker
    ledger = Ledger(pg_url, name, shared=True)
    att = ledger.attempts()
    interrupted = [t for t in trials if any(ft.state.name == "FAIL" for ft in att[t])]
    assert len(interrupted) == 1, {t: [ft.state.name for ft in att[t]] for t in trials}
    (victim,) = interrupted
    assert f"{victim}: closed an attempt whose process stopped (interrupted)" in other_out, other_out[-2000:]
    assert f"resume {victim}" in (out / victim / "train.log").read_text()
    for t in trials:  # each trial trained to the end exactly once
        states = [ft.state.name for ft in att[t]]
        assert states.count("COMPLETE") == 1 and "RUNNING" not in states, (t, states)
        assert [r["epoch"] for r in _rows(out / t)] == [1, 2, 3]
    # the same grid through a private SQLite ledger, one trial after another: the same numbers
    ref = tmp_path / "sqlite"
    s = run_sweep(grid, out=ref, log=lambda m: None, extra_overrides=ov)
    assert s["counts"] == {"done": 4}
    for t in trials:
        a = json.loads((out / t / "summary.json").read_text())
        b = json.loads((ref / t / "summary.json").read_text())
        for k in ("best_top1", "best_epoch", "final_top1", "top5", "mean_class_acc"):
            assert a[k] == b[k], (t, k)
        assert _rows(out / t) == _rows(ref / t), t
    # the whole study from a third process
    st = subprocess.run(
        [sys.executable, "-m", "fpar", "sweep", str(out), "--status", "--storage", pg_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert st.returncode == 0 and all(t in st.stdout for t in trials), st.stdout + st.stderr


def test_another_hosts_attempt_is_alive_while_its_heartbeat_is_fresh():
    """Across machines a pid means nothing: an attempt of another host is judged by its heartbeat alone."""

    class Attempt:
        def __init__(self, **attrs):
            self.user_attrs = attrs

    now = time.time()
    assert _alive(Attempt(host="elsewhere", pid=1, heartbeat=now - 5), stale_after=60)
    assert not _alive(Attempt(host="elsewhere", pid=1, heartbeat=now - 61), stale_after=60)
    assert not _alive(Attempt(host="elsewhere", pid=os.getpid()), stale_after=60)  # no heartbeat at all
