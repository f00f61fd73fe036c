"""Sweeps, reports and reproductions: grid expansion, Optuna-backed sweeps (parallel, restart, failures), tables
checked against hand-computed numbers, figures, index.html, and a miniature Figure 21 on the tiny data."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fpar.cli import main
from fpar.config import get, load_config, save_config
from fpar.errors import FparError
from fpar.experiments.grid import Ref, expand, load_grid, trial_config
from fpar.experiments.report import make_report, mean_std, mmap_downsampling_figure
from fpar.experiments.reproduce import available, figure_name, reproduce
from fpar.experiments.sweep import HOST, Ledger, run_sweep, storage_url, sweep_status, write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "fpar" / "configs"
STAGE1 = CONFIGS / "ego_rnn_stage1.yaml"
REAL_MAP = Path(__file__).resolve().parent / "data" / "gtea61-real-clip" / "map0011.png"


def _grid(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text.replace("STAGE1", str(STAGE1)).replace("CONFIGS", str(CONFIGS)))
    return p


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------------------
# Grid files


def test_grid_product_seeds_names_and_configs(tmp_path):
    g = _grid(
        tmp_path,
        """
name: prod
base: STAGE1
overrides: [train.epochs=3]
grid:
  optim.lr: [1.0e-3, 1.0e-4]
  sched.milestones: [[30, 70], [40, 80]]
seeds: [0, 1]
columns: {optim.lr: LR, sched.milestones: STEP}
""",
    )
    trials = expand(g)
    assert len(trials) == 2 * 2 * 2
    names = [t.name for t in trials]
    assert len(set(names)) == 8
    assert names[0] == "LR1e-03_STEP30-70-seed0" and names[1] == "LR1e-03_STEP30-70-seed1"
    assert trials[0].label == "LR=1e-03 STEP=[30, 70]"
    assert expand(g) == trials  # stable
    cfg = trial_config(trials[-1], {})
    assert cfg.optim.lr == 1e-4 and cfg.sched.milestones == [40, 80] and cfg.seed == 1 and cfg.train.epochs == 3
    assert cfg.name == "prod/LR1e-04_STEP40-80-seed1" and cfg.data.frames == 7  # the rest from the recipe
    # command-line overrides come after the grid's values; --seeds replaces the grid's
    t = expand(g, extra_overrides=["train.epochs=1", "optim.lr=0.5"], seeds=[7])
    assert len(t) == 4 and {x.seed for x in t} == {7}
    assert trial_config(t[0], {}).train.epochs == 1 and trial_config(t[0], {}).optim.lr == 0.5


def test_grid_explicit_points_times_grid_labels_and_published(tmp_path):
    g = _grid(
        tmp_path,
        """
base: STAGE1
points:
  - {optim.lr: 1.0e-4, optim.weight_decay: 4.0e-3}
  - {id: low, label: "low lr", optim.lr: 5.0e-5, optim.weight_decay: 4.0e-5, base: CONFIGS/ego_rnn_stage2.yaml}
grid:
  sched.gamma: [0.1, 0.5]
columns: {optim.lr: LR, optim.weight_decay: WD, sched.gamma: GAMMA}
published:
  "LR=1e-04 WD=4e-03 GAMMA=0.5": 62.5
  "low lr GAMMA=0.1": 60.0
""",
    )
    trials = expand(g)
    assert [t.name for t in trials] == [
        "LR1e-04_WD4e-03_GAMMA0.1-seed0",
        "LR1e-04_WD4e-03_GAMMA0.5-seed0",
        "low_GAMMA0.1-seed0",
        "low_GAMMA0.5-seed0",
    ]
    assert [t.label for t in trials][2:] == ["low lr GAMMA=0.1", "low lr GAMMA=0.5"]
    assert [t.published for t in trials] == [None, 62.5, 60.0, None]
    assert trials[2].base.endswith("ego_rnn_stage2.yaml")
    cfg = trial_config(trials[3], {})
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.sched.gamma, cfg.train.epochs) == (5e-5, 4e-5, 0.5, 150)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "base: STAGE1\ngrid: {optim.lrr: [1, 2]}\n",
            r"unknown config key 'optim.lrr' in grid file .*g.yaml.*'optim.lr'",
        ),
        ("base: STAGE1\npoints: [{model.ms.tsk: reg}]\n", r"'model.ms.tsk' in grid file .*point 1.*'model.ms.task'"),
        ("base: STAGE1\nseed: [0, 1]\n", r"unknown key 'seed' in grid file .*g.yaml; did you mean 'seeds'"),
        ("base: STAGE1\noverrides: [train.epoch=2]\n", r"'train.epoch' in grid file .*'train.epochs'"),
        ("base: STAGE1\ngrid: {sched.milestones: [30, 70]}\n", r"list of lists"),
        ("base: STAGE1\npoints: [{model.ms.task: regression}]\n", r"model.ms.task.*choose one of cls, reg"),
        ("grid: {optim.lr: [1]}\n", r"no base recipe"),
        ("base: STAGE1\npublished: {nope: 1}\n", r"published names 'nope'"),
    ],
)
def test_grid_errors_name_the_file_and_suggest(tmp_path, text, match):
    with pytest.raises(FparError, match=match):
        expand(_grid(tmp_path, text))


def test_stages_reference_earlier_runs(tmp_path):
    g = _grid(
        tmp_path,
        """
name: chain
seeds: [0, 1]
stages:
  - name: s1
    base: STAGE1
    points: [{id: a, model.cam: true}, {id: b, model.cam: false}]
  - name: once
    base: STAGE1
    seeds: [0]
    report: false
  - name: s2
    base: CONFIGS/ego_rnn_stage2.yaml
    overrides: {init.from: "${stage:s1}"}
    points:
      - {id: a, model.cam: true}
      - {id: c, model.cam: false, model.rgb_run: "${stage:once}"}
      - {id: d, model.cam: true, model.flow_run: "${stage:s1/b}"}
""",
    )
    trials = {t.name: t for t in expand(g)}
    assert len(trials) == 4 + 1 + 6
    assert trials["s2--a-seed1"].deps == ["s1--a-seed1"]  # same id, same seed
    assert trials["s2--c-seed1"].deps == ["once--base-seed0", "s1--b-seed1"]  # by value; a stage run once
    assert trials["s2--d-seed0"].deps == ["s1--a-seed0", "s1--b-seed0"]
    assert dict(trials["s2--c-seed1"].overrides)["init.from"] == Ref("s1--b-seed1")
    cfg = trial_config(trials["s2--c-seed1"], {"s1--b-seed1": "/runs/x", "once--base-seed0": "/runs/y"})
    assert get(cfg, "init.from") == "/runs/x" and cfg.model.rgb_run == "/runs/y"
    assert not trials["once--base-seed0"].report
    bad = _grid(
        tmp_path,
        """
stages:
  - {name: s1, base: STAGE1, points: [{id: a, model.cam: true}, {id: b, model.cam: true}]}
  - {name: s2, base: STAGE1, points: [{id: c, init.from: "${stage:s1}"}]}
""",
        "bad.yaml",
    )
    with pytest.raises(FparError, match=r"matches a, b of stage 's1'; write \$\{stage:s1/ID\}"):
        expand(bad)
    fwd = _grid(tmp_path, "stages:\n  - {name: s1, base: STAGE1, points: [{init.from: '${stage:s2}'}]}\n", "f.yaml")
    with pytest.raises(FparError, match="names no earlier stage"):
        expand(fwd)


@pytest.mark.parametrize("name", ["fig07", "fig12", "fig13", "fig14", "fig15", "fig21", "fig24", "fig25", "loso"])
def test_paper_grids_expand_with_the_reports_numbers(name):
    g = load_grid(CONFIGS / "paper" / f"{name}.yaml")
    trials = expand(g, extra_overrides=["data.root=/data/GTEA61"])
    rows = {(t.stage, t.point): t for t in trials if t.report}
    expected_rows = {"fig07": 11, "fig12": 4, "fig13": 4, "fig14": 36, "fig15": 30, "fig21": 7, "fig24": 4}
    expected_rows |= {"fig25": 4, "loso": 4}
    assert len(rows) == expected_rows[name]
    published = [t.published for t in rows.values() if t.published is not None]
    assert len(published) == (1 if name == "loso" else len(rows))
    if name == "fig14":
        pub = {t.label: t.published for t in rows.values()}
        assert pub["LR=1e-04 WEIGHT_DECAY=4e-03 STEP_SIZE=[40, 80] GAMMA=0.2"] == 75.00
        assert max(published) == 75.00
    if name == "fig15":
        assert max(published) == 72.41 and {t.seed for t in trials} == {0}
    if name == "fig21":
        s2 = [t for t in trials if t.stage == "s2"]
        assert len(s2) == 21 and {tuple(t.deps) for t in s2} == {("s1--base-seed0",)}
        cfg = trial_config(s2[-1], {"s1--base-seed0": "/r"})
        assert (cfg.model.ms.layer, cfg.model.ms.task, cfg.model.ms.target) == ("conv3", "reg", "grid")
        assert (cfg.optim.lr, cfg.train.epochs, cfg.sched.milestones, cfg.sched.gamma) == (1e-4, 150, [30, 80], 0.2)
    if name == "loso":
        assert {t.fold for t in trials} == {"S1", "S2", "S3", "S4"}
        cfg = trial_config(trials[1], {})
        assert cfg.data.test_subjects == ["S2"] and cfg.data.train_subjects == ["S1", "S3", "S4"]
    if name == "fig12":
        s1 = trial_config(trials[0], {})
        assert (s1.optim.lr, s1.train.epochs, s1.sched.milestones, s1.sched.gamma) == (1e-3, 150, [50, 100], 0.1)


def test_figure_names():
    assert figure_name("21") == "fig21" and figure_name("fig7") == "fig07" and figure_name("Figure 14") == "fig14"
    assert figure_name("loso") == "loso" and figure_name("20") == "fig20"
    assert {"fig07", "fig21", "loso"} <= set(available())
    with pytest.raises(FparError, match="no reproduction for 'fig99'"):
        figure_name("fig99")


# --------------------------------------------------------------------------------------------------------------
# Sweeps


def _attempts(sweep: Path, name: str):
    m = json.loads((sweep / "sweep.json").read_text())
    return Ledger(storage_url(sweep, None), m["study"]).attempts()


def test_sweep_with_two_workers(tiny_overrides, tmp_path):
    g = _grid(tmp_path, "name: par\nbase: STAGE1\ngrid: {optim.lr: [1.0e-3, 1.0e-4], model.cam: [true, false]}\n")
    out = tmp_path / "sw"
    lines: list[str] = []
    s = run_sweep(g, workers=2, out=out, log=lines.append, extra_overrides=[*tiny_overrides, "train.epochs=1"])
    assert s["counts"] == {"done": 4} and len(s["ran"]) == 4
    for r in s["trials"]:
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert r["best_top1"] == summary["best_top1"] and summary["epochs"] == 1
        assert (Path(r["run"]) / "config.yaml").is_file() and Path(r["run"]).parent == out.resolve()
    att = _attempts(out, "par")
    assert sorted(att) == sorted(r["name"] for r in s["trials"])
    for name, recs in att.items():
        assert [ft.state.name for ft in recs] == ["COMPLETE"]
        assert recs[0].value == recs[0].user_attrs["best_top1"]
        assert recs[0].user_attrs["run"] == str(out.resolve() / name) and "seed" in recs[0].params
        assert "optim.lr" in recs[0].params  # numeric point values are Optuna params
    # a second call finds everything finished and trains nothing
    s2 = run_sweep(g, workers=2, out=out, log=_quiet, extra_overrides=[*tiny_overrides, "train.epochs=1"])
    assert s2["ran"] == [] and s2["counts"] == {"done": 4}
    # changing the settings of finished runs is refused instead of silently reusing them
    with pytest.raises(FparError, match="finished with other settings.*train.epochs"):
        run_sweep(g, out=out, log=_quiet, extra_overrides=[*tiny_overrides, "train.epochs=2"])


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_sweep_restarts_where_it_stopped(tiny_overrides, tmp_path):
    g = _grid(tmp_path, "name: kill\nbase: STAGE1\ngrid: {optim.lr: [1.0e-3, 2.0e-3, 3.0e-3]}\n")
    out = tmp_path / "sw"
    ov = [*tiny_overrides, "train.epochs=3"]
    env = {**os.environ, "FPAR_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fpar", "sweep", str(g), "--out", str(out), *ov],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    first, second = out / "lr1e-03-seed0", out / "lr2e-03-seed0"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (first / "summary.json").is_file() and (
                (second / "last.pt").is_file() or (second / "summary.json").is_file()
            ):
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a hard stop: no chance to tidy up
    finally:
        proc.wait()
    assert (first / "summary.json").is_file(), proc.stderr.read().decode()[-2000:]
    before = _snapshot(first)
    done_at_kill = {p.name for p in out.iterdir() if (p / "summary.json").is_file()}
    partial = (second / "last.pt").is_file() and not (second / "summary.json").is_file()
    lines: list[str] = []
    s = run_sweep(g, out=out, log=lines.append, extra_overrides=ov)
    assert s["counts"] == {"done": 3}
    assert set(s["ran"]) == {"lr1e-03-seed0", "lr2e-03-seed0", "lr3e-03-seed0"} - done_at_kill
    assert _snapshot(first) == before  # the finished trial was not touched
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    if partial:  # the trial killed part-way resumed from its last.pt
        assert "resume lr2e-03-seed0" in (second / "train.log").read_text()
        recs = _attempts(out, "kill")["lr2e-03-seed0"]
        assert [ft.state.name for ft in recs] == ["FAIL", "COMPLETE"] and recs[0].user_attrs["interrupted"]
        assert any("closed an attempt" in line for line in lines)


def test_an_inline_trial_keeps_its_heartbeat_while_it_trains(tmp_path, monkeypatch):
    """With workers=1 a trial trains inside the scheduler's own call; its attempt must still beat, or another
    process sharing the storage takes it as dead after --stale-after seconds and trains it a second time."""
    import fpar.experiments.sweep as sweep_mod

    g = _grid(tmp_path, "name: beat\nbase: STAGE1\n")
    out = tmp_path / "sw"
    seen: dict[str, float] = {}

    def slow_trial(trial, runs, run):  # stands in for the training: watches its own attempt from a second connection
        deadline = time.time() + 10
        while time.time() < deadline:
            (ft,) = _attempts(out, trial.name)[trial.name]
            if ft.user_attrs["heartbeat"] > ft.user_attrs["started"]:
                seen["fresh_after"] = ft.user_attrs["heartbeat"] - ft.user_attrs["started"]
                break
            time.sleep(0.05)
        return {"ok": False, "error": "stand-in trial", "seconds": 0}

    monkeypatch.setattr(sweep_mod, "execute_trial", slow_trial)
    run_sweep(g, out=out, log=_quiet, heartbeat_s=0.1)
    assert 0 < seen.get("fresh_after", -1) < 5, seen


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tiny_overrides, tmp_path):
    g = _grid(
        tmp_path,
        """
name: fails
stages:
  - name: s1
    base: STAGE1
    points:
      - {id: ok}
      - {id: bad, train.trainable: ['^nonexistent\\.']}
  - name: s2
    base: CONFIGS/ego_rnn_stage2.yaml
    overrides: {init.from: "${stage:s1}"}
    points: [{id: ok}, {id: bad}]
""",
    )
    out = tmp_path / "sw"
    lines: list[str] = []
    s = run_sweep(g, out=out, log=lines.append, extra_overrides=[*tiny_overrides, "train.epochs=1"])
    state = {r["name"]: r for r in s["trials"]}
    assert state["s1--ok-seed0"]["state"] == "done" and state["s2--ok-seed0"]["state"] == "done"
    assert state["s1--bad-seed0"]["state"] == "failed"
    assert "'^nonexistent\\\\.' match no parameter" in state["s1--bad-seed0"]["error"]
    assert state["s2--bad-seed0"]["state"] == "failed" and "s1--bad-seed0" in state["s2--bad-seed0"]["error"]
    assert (out / "s1--bad-seed0" / "error.txt").is_file()
    att = _attempts(out, "fails")
    assert (
        att["s1--bad-seed0"][-1].state.name == "FAIL"
        and "match no parameter" in att["s1--bad-seed0"][-1].user_attrs["error"]
    )
    # without retries nothing runs again; the status lists the failures
    s2 = run_sweep(g, out=out, log=_quiet, extra_overrides=[*tiny_overrides, "train.epochs=1"], retry_failed=False)
    assert s2["ran"] == [] and s2["counts"] == {"done": 2, "failed": 2}
    assert sweep_status(out)["counts"] == {"done": 2, "failed": 2}


def test_trial_running_elsewhere_is_skipped_until_its_process_is_gone(tiny_overrides, tmp_path):
    g = _grid(tmp_path, "name: busy\nbase: STAGE1\ngrid: {optim.lr: [1.0e-3, 1.0e-4]}\n")
    out = (tmp_path / "sw").resolve()
    out.mkdir()
    ov = [*tiny_overrides, "train.epochs=1"]
    busy = expand(g, extra_overrides=ov)[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for a live sweep
    try:
        ledger = Ledger(storage_url(out, None), "busy")
        ot = ledger.start(busy, out / busy.name)
        ot.set_user_attr("pid", other.pid)
        assert ledger.start(busy, out / busy.name) is None  # a second claim steps back
        s = run_sweep(g, out=out, log=_quiet, extra_overrides=ov)
        state = {r["name"]: r["state"] for r in s["trials"]}
        assert state == {busy.name: "running", "lr1e-04-seed0": "done"} and s["ran"] == ["lr1e-04-seed0"]
    finally:
        other.kill()
        other.wait()
    lines: list[str] = []
    s = run_sweep(g, out=out, log=lines.append, extra_overrides=ov)  # its process is gone: closed, then run
    assert s["ran"] == [busy.name] and s["counts"] == {"done": 2}
    assert any("closed an attempt whose process stopped (interrupted)" in line for line in lines)
    recs = _attempts(out, "busy")[busy.name]
    assert [ft.state.name for ft in recs] == ["FAIL", "COMPLETE"]  # the PRUNED claim is not an attempt


def test_a_claim_waits_until_an_earlier_attempt_is_named(tmp_path):
    """Two processes claim one trial at the same moment: the later attempt (higher number) waits while the earlier
    one is still being named, sees it belongs to the same trial and a live process, and steps back. Deciding before
    the name was there would have let both train it."""
    g = _grid(tmp_path, "name: naming\nbase: STAGE1\n")
    out = (tmp_path / "sw").resolve()
    out.mkdir()
    (t,) = expand(g)
    url = storage_url(out, None)
    early = Ledger(url, "naming").study.ask()  # created; its process has not written its attributes yet
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for that process

    def name_it() -> None:
        time.sleep(0.5)
        for k, v in {"host": HOST, "pid": other.pid, "heartbeat": time.time(), "trial": t.name}.items():
            early.set_user_attr(k, v)

    naming = threading.Thread(target=name_it)
    try:
        naming.start()
        assert Ledger(url, "naming").start(t, out / t.name) is None
    finally:
        naming.join()
        other.kill()
        other.wait()


def test_an_attempt_whose_process_died_after_the_first_look_is_closed_before_the_claim(tmp_path, monkeypatch):
    """A process sharing the sweep claims trial B and dies while this one trains trial A (after this one's first
    look at the ledger): when this one comes to B, it closes the dead attempt (FAIL, interrupted) before it claims
    B, instead of training B beside an attempt left RUNNING for good."""
    import fpar.experiments.sweep as sweep_mod

    g = _grid(tmp_path, "name: late\nbase: STAGE1\ngrid: {optim.lr: [1.0e-3, 1.0e-4]}\n")
    out = (tmp_path / "sw").resolve()
    first, second = expand(g)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid of this host whose process is gone

    def stand_in(trial, runs, run):
        if trial.name == first.name:  # meanwhile, the other process claims the second trial and dies
            ot = Ledger(storage_url(out, None), "late").start(second, out / second.name)
            ot.set_user_attr("pid", dead.pid)
        return {"ok": False, "error": "stand-in trial", "seconds": 0}

    monkeypatch.setattr(sweep_mod, "execute_trial", stand_in)
    lines: list[str] = []
    run_sweep(g, out=out, log=lines.append)
    assert f"{second.name}: closed an attempt whose process stopped (interrupted)" in lines, lines
    recs = _attempts(out, "late")[second.name]
    assert [ft.state.name for ft in recs] == ["FAIL", "FAIL"]
    assert recs[0].user_attrs["interrupted"] and recs[1].user_attrs["error"] == "stand-in trial"


def test_max_trials_leaves_the_rest_for_the_next_call(tiny_overrides, tmp_path, capsys):
    g = _grid(tmp_path, "name: lim\nbase: STAGE1\ngrid: {optim.lr: [1.0e-3, 1.0e-4]}\n")
    out = tmp_path / "sw"
    args = ["sweep", str(g), "--out", str(out), *tiny_overrides, "train.epochs=1"]
    assert main([*args, "--max-trials", "1"]) == 0
    assert "1 trial(s) not run in this call (--max-trials reached)" in capsys.readouterr().out
    assert main(["sweep", str(out), "--status"]) == 0
    assert "1 done, 1 pending" in capsys.readouterr().out
    assert main(args) == 0
    assert "2 done" in capsys.readouterr().out.splitlines()[-3]


# --------------------------------------------------------------------------------------------------------------
# Reports


def _fake_run(folder: Path, cfg_overrides, summary: dict, epochs: int = 4, ms: bool = False) -> None:
    """A finished run folder without training: config.yaml (a list of overrides or a config), metrics.jsonl,
    summary.json (``summary`` over defaults) and confusion.csv."""
    folder.mkdir(parents=True)
    cfg = load_config(STAGE1, cfg_overrides) if isinstance(cfg_overrides, list) else cfg_overrides
    save_config(cfg, folder / "config.yaml")
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 1e-3 if e <= 2 else 1e-4, "train_loss": 2.0 / e, "train_top1": 20.0 * e}
        row |= {"val_top1": 10.0 * e, "val_loss": 3.0 / e, "val_top5": 50.0}
        if ms:
            row |= {"train_ms_loss": 30.0 - e, "train_ms_acc": 60.0 + e}
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"name": cfg.name, "best_epoch": epochs, "videos": 116, "select_on": "test", "epochs": epochs}
    (folder / "summary.json").write_text(json.dumps(base | summary))
    classes = ["take_cup", "put_cup", "open_jam"]
    conf = [[3, 1, 0], [0, 2, 2], [1, 0, 4]]
    (folder / "confusion.csv").write_text(
        "true\\pred," + ",".join(f'"{c}"' for c in classes) + "\n"
        + "".join(f'"{c}",' + ",".join(map(str, r)) + "\n" for c, r in zip(classes, conf))
    )  # fmt: skip


def test_report_mean_std_from_fake_runs(tmp_path):
    runs = tmp_path / "runs"
    a = [(50.0, 40.0, 80.0, 45.0, 30.0), (60.0, 55.0, 85.0, 50.0, 40.0), (70.0, 65.0, 90.0, 70.0, 50.0)]
    for seed, (b, f, t5, mc, pr) in enumerate(a):
        s = {"best_top1": b, "final_top1": f, "top5": t5, "mean_class_acc": mc, "pair_top1": pr, "seed": seed}
        _fake_run(runs / f"a{seed}", [f"seed={seed}", "name=point_a", "optim.lr=1e-3"], s, ms=seed == 0)
    for seed, b in enumerate([40.0, 44.0]):
        s = {"best_top1": b, "final_top1": b - 1, "top5": 70.0, "mean_class_acc": b, "seed": seed}
        _fake_run(runs / f"b{seed}", [f"seed={seed}", "name=point_b", "optim.lr=1e-4"], s)
    r = make_report([runs / n for n in ("a0", "a1", "a2", "b0", "b1")], tmp_path / "rep")
    (table,) = r["tables"]
    rows = {row.label: row for row in table.rows}
    assert rows["point_a"].n == 3 and rows["point_b"].n == 2
    assert rows["point_a"].stats["best_top1"][:2] == pytest.approx((60.0, 10.0))
    assert rows["point_a"].stats["final_top1"][:2] == pytest.approx(
        (160 / 3, math.sqrt(((40 - 160 / 3) ** 2 + (55 - 160 / 3) ** 2 + (65 - 160 / 3) ** 2) / 2))
    )
    assert rows["point_a"].stats["top5"][:2] == pytest.approx((85.0, 5.0))
    assert rows["point_a"].stats["pair_top1"][:2] == pytest.approx((40.0, 10.0))
    assert rows["point_b"].stats["best_top1"][:2] == pytest.approx((42.0, math.sqrt(8.0)))
    assert rows["point_b"].stats["pair_top1"] == (None, None, 0)
    assert rows["point_a"].best and not rows["point_b"].best
    csv_rows = list(__import__("csv").DictReader((tmp_path / "rep" / "table.csv").open()))
    by = {c["label"]: c for c in csv_rows}
    assert float(by["point_a"]["best_top1_mean"]) == 60.0 and float(by["point_a"]["best_top1_std"]) == 10.0
    assert float(by["point_b"]["best_top1_std"]) == pytest.approx(2.8284, abs=1e-4)
    assert by["point_a"]["best"] == "True" and by["point_b"]["best"] == "False" and by["point_a"]["optim.lr"] == "1e-03"
    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| **point_a** | **1e-03** | **3** | **60.00 ± 10.00** |" in md
    assert "| point_b | 1e-04 | 2 | 42.00 ± 2.83 |" in md
    assert "test set: 116 videos (subjects S2); epochs selected on test" in md
    # figures: every file exists, is a PNG, and index.html links each one (relatively)
    names = [Path(f).name for f in r["files"] if f.endswith(".png")]
    assert {"runs_val_top1.png", "runs_val_loss.png"} <= set(names)
    assert "runs_a2_curves.png" in names and "runs_a2_confusion.png" in names  # per run: the best seed of a point
    assert "runs_b1_curves.png" in names and "runs_a0_curves.png" not in names
    r_all = make_report([runs], tmp_path / "rep_all", all_runs=True)
    assert any(f.endswith("runs_a0_ms_loss.png") for f in r_all["files"])
    html = (tmp_path / "rep_all" / "index.html").read_text()
    for f in r_all["files"]:
        assert Path(f).stat().st_size > 0
        if f.endswith(".png"):
            assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f'src="figures/{Path(f).name}"' in html
    assert "<b>point_a</b>" in html and "http" not in html


def test_mean_std_edge_cases():
    assert mean_std([]) == (None, None, 0)
    assert mean_std([3.0]) == (3.0, None, 1)
    m, s, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (m, n) == (2.5, 4) and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_report_of_a_sweep_folder_with_published_numbers_and_pivot(tmp_path):
    g = _grid(
        tmp_path,
        """
name: piv
base: STAGE1
grid: {optim.lr: [1.0e-4, 5.0e-4], sched.gamma: [0.1, 0.5]}
seeds: [0, 1]
columns: {optim.lr: LR, sched.gamma: GAMMA}
pivot: {rows: [optim.lr], columns: sched.gamma}
published: {"LR=1e-04 GAMMA=0.1": 70.0, "LR=5e-04 GAMMA=0.5": 60.0}
""",
    )
    grid = load_grid(g)
    trials = expand(grid)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_manifest(sweep, grid, trials, "sqlite:///x.db", [], None)
    acc = {"LR1e-04_GAMMA0.1": (66.0, 68.0), "LR1e-04_GAMMA0.5": (50.0, 52.0), "LR5e-04_GAMMA0.1": (40.0, 40.0)}
    acc["LR5e-04_GAMMA0.5"] = (61.0, None)  # one seed never finished
    for t in trials:
        v = acc[t.point][t.seed]
        if v is not None:
            _fake_run(sweep / t.name, trial_config(t, {}), {"best_top1": v, "final_top1": v, "seed": t.seed})
    r = make_report([sweep], tmp_path / "rep")
    md = r["markdown"]
    assert "| **LR=1e-04 GAMMA=0.1** | **1e-04** | **0.1** | **2** | **67.00 ± 1.41** |" in md
    assert "| **70.00** | **-3.00** |" in md  # the report's number and ours - report
    assert "| LR=5e-04 GAMMA=0.5 | 5e-04 | 0.5 | 1/2 | 61.00 |" in md and "| 60.00 | +1.00 |" in md
    assert "| LR | GAMMA=0.1 | GAMMA=0.5 |" in md and "| 1e-04 | **67.00 (70.00)** | 51.00 |" in md
    assert "1 run(s) of this table have not finished" in md


def test_loso_table_averages_folds(tmp_path):
    g = _grid(tmp_path, "name: lo\nbase: STAGE1\nfolds: {loso: [S1, S2]}\nseeds: [0, 1]\n")
    grid = load_grid(g)
    trials = expand(grid)
    assert [t.name for t in trials] == [
        "base-seed0-testS1",
        "base-seed0-testS2",
        "base-seed1-testS1",
        "base-seed1-testS2",
    ]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_manifest(sweep, grid, trials, "sqlite:///x.db", [], None)
    acc = {(0, "S1"): 50.0, (0, "S2"): 70.0, (1, "S1"): 60.0, (1, "S2"): 80.0}
    for t in trials:
        _fake_run(sweep / t.name, trial_config(t, {}), {"best_top1": acc[(t.seed, t.fold)], "seed": t.seed})
    (table,) = make_report([sweep], tmp_path / "rep")["tables"]
    row = table.rows[0]
    assert row.stats["best_top1"][:3] == pytest.approx((65.0, math.sqrt(50.0), 2))  # seed means 60 and 70
    assert row.fold_means == {"S1": 55.0, "S2": 75.0}
    assert "leave-one-subject-out" in make_report([sweep], tmp_path / "rep2")["markdown"]


def test_folds_by_key_expand_to_one_trial_per_value(tmp_path):
    g = load_grid(_grid(tmp_path, "name: kf\nbase: STAGE1\nfolds: {key: data.frames, values: [5, 7]}\nseeds: [0, 1]\n"))
    assert g.fold_key == "data.frames" and g.fold_labels == ["5", "7"]
    trials = expand(g)
    assert [t.name for t in trials] == [
        "base-seed0-frames5",
        "base-seed0-frames7",
        "base-seed1-frames5",
        "base-seed1-frames7",
    ]
    assert [t.fold for t in trials] == ["5", "7", "5", "7"]
    assert ("data.frames", 7) in trials[1].overrides
    assert not any(k in ("data.train_subjects", "data.test_subjects") for k, _ in trials[1].overrides)
    assert trial_config(trials[1], {}).data.frames == 7
    # string values; the trial name takes the key's last dotted part
    g = load_grid(_grid(tmp_path, "base: STAGE1\nfolds: {key: optim.name, values: [adam, sgd]}\n", "s.yaml"))
    assert [t.name for t in expand(g, check=False)] == ["base-seed0-nameadam", "base-seed0-namesgd"]
    # the old forms are unchanged
    g = load_grid(_grid(tmp_path, "base: STAGE1\nfolds: loso\n", "l.yaml"))
    assert g.fold_key == "data.test_subjects" and g.fold_labels == ["S1", "S2", "S3", "S4"]
    t = expand(g)[1]
    assert (t.name, t.fold) == ("base-seed0-testS2", "S2")
    assert t.overrides[:2] == [("data.train_subjects", ["S1", "S3", "S4"]), ("data.test_subjects", ["S2"])]


@pytest.mark.parametrize(
    ("folds", "match"),
    [
        ("lopo", r"folds must be 'loso', \{loso: \[S1, S2, S3, S4\]\} or \{key: data.split, values: \[1, 2, 3\]\}"),
        ("{key: data.frames}", r"g.yaml: folds must be 'loso'.*\{key: data.split, values"),
        ("{key: data.frames, values: [5]}", r"g.yaml: folds: .*at least two values"),
        (
            "{key: data.frams, values: [5, 7]}",
            r"unknown config key 'data.frams' in grid file .*g.yaml \(folds\).*data.frames",
        ),
        ("{key: data.frames, values: [5, 5]}", r"repeats a value"),
        ("{loso: [S1]}", r"at least two subjects"),
    ],
)
def test_bad_folds_fail_in_one_line(tmp_path, folds, match):
    with pytest.raises(FparError, match=match) as e:
        load_grid(_grid(tmp_path, f"base: STAGE1\nfolds: {folds}\n"))
    assert "\n" not in str(e.value) and "g.yaml" in str(e.value)


def test_report_of_folds_by_key_and_extra_metrics(tmp_path):
    g = _grid(tmp_path, "name: kf\nbase: STAGE1\nfolds: {key: data.frames, values: [5, 7, 9]}\nseeds: [0, 1]\n")
    grid = load_grid(g)
    trials = expand(grid)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_manifest(sweep, grid, trials, "sqlite:///x.db", [], None)
    m = json.loads((sweep / "sweep.json").read_text())
    assert m["folds"] == ["5", "7", "9"] and m["fold_key"] == "data.frames"
    acc = {(0, "5"): 50.0, (0, "7"): 60.0, (0, "9"): 76.0, (1, "5"): 40.0, (1, "7"): 62.0, (1, "9"): 70.0}
    verb = {(0, "5"): 30.0, (0, "7"): 33.0, (0, "9"): 36.0, (1, "5"): 31.0, (1, "7"): 34.0, (1, "9"): 37.0}
    for t in trials:
        s = {"best_top1": acc[(t.seed, t.fold)], "verb_top1": verb[(t.seed, t.fold)], "seed": t.seed}
        _fake_run(sweep / t.name, trial_config(t, {}), s)
    r = make_report([sweep], tmp_path / "rep")
    (table,) = r["tables"]
    row = table.rows[0]
    seed_means = [(50 + 60 + 76) / 3, (40 + 62 + 70) / 3]  # 62 and 57.33...
    m, sd = sum(seed_means) / 2, abs(seed_means[0] - seed_means[1]) / math.sqrt(2)
    assert row.stats["best_top1"][:3] == pytest.approx((m, sd, 2))
    assert row.stats["verb_top1"][:3] == pytest.approx((33.5, math.sqrt(0.5), 2))  # seed means 33 and 34
    assert row.fold_means == pytest.approx({"5": 45.0, "7": 61.0, "9": 73.0})
    md = r["markdown"]
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert header == (
        "| row | n | best top-1 (mean ± std, selected on test) | verb top-1 | frames 5 | frames 7 | frames 9 |"
    )
    assert f"| **main** | **2** | **{m:.2f} ± {sd:.2f}** | **33.50 ± 0.71** | **45.00** | **61.00** | **73.00** |" in md
    assert "3 folds over data.frames = 5, 7, 9 (mean over folds)" in md
    csv_rows = list(__import__("csv").DictReader((tmp_path / "rep" / "table.csv").open()))
    assert float(csv_rows[0]["verb_top1_mean"]) == 33.5 and "verb_top5_mean" not in csv_rows[0]
    # a sweep.json whose trials lack their fold: the fold is read from the config at fold_key
    old = json.loads((sweep / "sweep.json").read_text())
    for t in old["trials"]:
        t.pop("fold")
    (sweep / "sweep.json").write_text(json.dumps(old))
    (table,) = make_report([sweep], tmp_path / "rep_old")["tables"]
    assert table.rows[0].stats["best_top1"][:3] == pytest.approx((m, sd, 2))
    assert table.rows[0].fold_means == pytest.approx({"5": 45.0, "7": 61.0, "9": 73.0})


def test_report_without_extra_metrics_keeps_its_columns(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _fake_run(runs / f"a{seed}", [f"seed={seed}", "name=a"], {"best_top1": 50.0 + seed, "seed": seed})
    r = make_report([runs], tmp_path / "rep")
    assert "| row | n | best top-1 (mean ± std, selected on test) |" in r["markdown"]
    assert "verb" not in (tmp_path / "rep" / "table.csv").read_text()


def test_mmap_downsampling_figure(tmp_path):
    m = np.zeros((256, 455), np.uint8)
    m[60:180, 200:330] = 255
    p = mmap_downsampling_figure(m, tmp_path / "fig20.png")
    assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    if REAL_MAP.is_file():
        assert mmap_downsampling_figure(REAL_MAP, tmp_path / "real.png").stat().st_size > 1000


def test_cli_report_and_errors(tmp_path, capsys):
    _fake_run(tmp_path / "r", ["seed=0"], {"best_top1": 55.0, "final_top1": 50.0, "seed": 0})
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "55.00" in out and "index.html" in out and (tmp_path / "rep" / "index.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nogrid.yaml")]) == 2
    assert "grid file" in capsys.readouterr().err
    assert main(["reproduce", "fig99", "--data", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------------------------------
# A miniature reproduction


@pytest.mark.slow
def test_reproduce_fig21_quick_on_tiny_data(tiny_root, tmp_path):
    lines: list[str] = []
    r = reproduce(
        "21",
        tiny_root,
        quick=True,
        out=tmp_path / "fig21",
        overrides=["train.epochs=1", "data.frames=3", "model.mem_size=16", "train.batch_size=4", "train.max_batches=2"],
        log=lines.append,
    )
    assert r["figure"] == "fig21" and r["status"]["counts"] == {"done": 8}
    (table,) = r["report"]["tables"]
    assert [row.label for row in table.rows] == [
        "7x7 b&w conv5 binary",
        "7x7 b&w conv5 regression",
        "7x7 gray conv5 regression",
        "14x14 b&w conv4 binary",
        "14x14 gray conv4 regression",
        "28x28 b&w conv3 binary",
        "28x28 gray conv3 regression",
    ]
    assert all(row.n == 1 for row in table.rows)
    assert [row.published for row in table.rows] == [56.47, 62.07, 61.21, 63.22, 69.25, 54.60, 52.30]
    assert "| 14x14 gray conv4 regression | conv4 | grid | reg | 1 |" in r["table"].replace("**", "")
    assert r["table"] in "\n".join(lines)
    cfg = yaml.safe_load((tmp_path / "fig21" / "s2--28x28_grey_reg-seed0" / "config.yaml").read_text())
    assert cfg["init"]["from"] == str((tmp_path / "fig21" / "s1--base-seed0").resolve())
    assert cfg["model"]["ego_rnn"]["ms"]["layer"] == "conv3" and cfg["data"]["input_size"] == 64
    assert (tmp_path / "fig21" / "report" / "index.html").is_file()
