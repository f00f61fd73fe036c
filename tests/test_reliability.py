"""One writer per run folder, nothing written over, modes that collaborators can read, runs that extend."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fpar.cli import main
from fpar.config import load_config
from fpar.engine.trainer import train
from fpar.errors import FparError
from fpar.locks import LOCK_NAME, FolderLock
from tests.conftest import Forked, run_forked, tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _cfg(root, out, *extra):
    return load_config(None, [*tiny_args(root), "train.epochs=1", "train.max_batches=1", f"out={out}", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_held_folder_is_refused_and_a_stale_lock_is_taken_over(tiny_root, tmp_path, caplog):
    run = tmp_path / "r"
    with FolderLock(run, what="another trainer"):
        with pytest.raises(FparError, match=rf"{run} is being written by pid {os.getpid()} .*another trainer"):
            train(_cfg(tiny_root, run), log=lambda m: None)
    assert not (run / LOCK_NAME).exists()  # released
    # a lock left by a machine that stopped beating long ago (a pid cannot be checked across hosts)
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "heartbeat": time.time() - 3600}))
    with caplog.at_level("WARNING"):
        train(_cfg(tiny_root, run), log=lambda m: None)
    assert "taking over the stale lock of pid 1 on elsewhere" in caplog.text
    assert (run / "summary.json").is_file() and not (run / LOCK_NAME).exists()
    # a dead process on this host is stale at once, whatever its heartbeat says
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "heartbeat": time.time()}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK_NAME).write_text(json.dumps(info))
    with FolderLock(tmp_path / "d"):
        pass


def test_two_trainers_into_one_folder_one_wins(tiny_root, tmp_path):
    out = tmp_path / "shared"
    args = [*tiny_args(tiny_root), "train.epochs=1", "train.max_batches=1", f"out={out}", "--quiet"]
    procs = [Forked(["train", *args], {"FPAR_THREADS": "1"}) for _ in range(2)]  # two processes at once
    results = [p.wait(timeout=240) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "Traceback" not in loser and loser.count("\n") == 1
    assert "is being written by pid" in loser or "already holds" in loser
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # one run's row, not two interleaved runs


def test_results_are_never_written_over(tiny_root, tmp_path, capsys):
    run = tmp_path / "r"
    train(_cfg(tiny_root, run), log=lambda m: None)
    (run / "last.pt").unlink()  # a finished run whose last.pt went missing
    before = _snapshot(run)
    ov = [*tiny_args(tiny_root), "train.epochs=1", f"out={run}"]
    assert main(["train", *ov]) == 2
    err = capsys.readouterr().err
    assert "already holds results of a run (best.pt, summary.json); nothing was changed" in err
    assert _snapshot(run) == before
    (tmp_path / "file").write_text("mine")
    assert main(["train", *tiny_args(tiny_root), f"out={tmp_path / 'file'}"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"


def test_resume_of_a_finished_run_with_more_epochs_extends_it_exactly(tiny_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(tiny_root, a, "train.epochs=1"), log=lambda m: None)
    (a / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # left by a killed write
    assert main(["train", "--resume", str(a), "train.epochs=2", "--quiet"]) == 0
    assert not list(a.glob(".*.tmp"))
    train(_cfg(tiny_root, b, "train.epochs=2"), log=lambda m: None)
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    assert json.loads((a / "summary.json").read_text())["epochs"] == 2


def test_a_run_killed_in_its_first_epoch_says_to_rerun(tiny_root, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    cfg = _cfg(tiny_root, run)
    from fpar.config import save_config

    save_config(cfg, run / "config.yaml")  # what a run killed before its first epoch ended leaves
    assert main(["train", "--resume", str(run)]) == 2
    assert "stopped before the first epoch ended" in capsys.readouterr().err
    train(cfg, log=lambda m: None)  # rerunning the same command starts it again in the same folder
    assert (run / "summary.json").is_file()


def test_files_honour_the_umask(tiny_root, tmp_path, monkeypatch):
    import fpar.utils

    monkeypatch.setattr(fpar.utils, "_UMASK", 0o022)  # the process umask, read once at import
    run = tmp_path / "r"
    train(_cfg(tiny_root, run), log=lambda m: None)
    for name in ("best.pt", "last.pt", "summary.json", "config.yaml"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name


def test_synth_overwrite_replaces_only_its_own_datasets(tmp_path):
    from fpar.data.synth import MARKER, synthesize

    mine = tmp_path / "paper"
    (mine / ".git").mkdir(parents=True)
    (mine / "report.tex").write_text("\\documentclass{article}")
    before = _snapshot(mine)
    with pytest.raises(FparError, match="was not written by `fpar data synth`"):
        synthesize(mine, preset="tiny", overwrite=True)
    assert _snapshot(mine) == before
    ds = tmp_path / "ds"
    synthesize(ds, preset="tiny", seed=0)
    assert (ds / MARKER).is_file()
    first = (ds / "processed_frames2" / "S1").stat().st_ino
    synthesize(ds, preset="tiny", seed=1, overwrite=True)
    assert json.loads((ds / MARKER).read_text())["seed"] == 1 and not (tmp_path / "ds.old").exists()
    assert (ds / "processed_frames2" / "S1").stat().st_ino != first


BAD_RUNS = [
    (["train.device=mps"], "train.device=mps but this PyTorch has no usable MPS device"),
    (["optim.momentum=-1"], "optim.momentum' must be in [0, 1)"),
    (["data.select_on=val", "data.val_fraction=0.99"], "data.val_fraction=0.99 leaves no training videos"),
    (["model.name=ego_rn"], "unknown model 'ego_rn'"),
    (["data.format=epic"], "unknown dataset format 'epic'"),
    (["model.ego_rnn.ms.layer=conv9"], "choose one of conv3, conv4, conv5"),
]


@pytest.mark.parametrize("extra,message", BAD_RUNS)
def test_bad_run_settings_are_one_line_errors(extra, message, tiny_root, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *tiny_args(tiny_root), "train.epochs=1", f"out={out}", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (out / "config.yaml").exists()  # refused before anything was written


def test_more_bad_inputs_are_one_line_errors(tiny_root, tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    cases = [
        (["train", str(tmp_path / "bin.yaml")], "is not a text file"),
        (["data", "show", str(tiny_root), "S2/take_cup/1", "--frames", "0"], "--frames 0: show at least 1 frame"),
        (["data", "check", str(tiny_root), "--train", "S9"], "subject(s) S9 not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_huge_seeds_are_accepted_and_another_runs_last_pt_is_refused(tiny_root, tmp_path, capsys):
    a = tmp_path / "a"
    train(_cfg(tiny_root, a, f"seed={10**14}"), log=lambda m: None)
    assert json.loads((a / "summary.json").read_text())["seed"] == 10**14
    b = tmp_path / "b"
    train(_cfg(tiny_root, b, "model.name=flow_resnet", "data.flow_stack=2"), log=lambda m: None)
    (a / "summary.json").unlink()
    ck = torch.load(b / "last.pt", weights_only=True)
    ck["finished"] = False
    torch.save(ck, a / "last.pt")
    before = _snapshot(a)
    assert main(["train", "--resume", str(a)]) == 2
    err = capsys.readouterr().err
    assert "is a checkpoint of model 'flow_resnet'" in err and "does not belong to this run folder" in err
    assert _snapshot(a) == before


def _copy_tiny(tiny_root, tmp_path) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    return root


def test_colour_flow_is_reported_and_refused_naming_the_file(tiny_root, tmp_path, capsys):
    import cv2
    import numpy as np

    root = _copy_tiny(tiny_root, tmp_path)
    video = sorted(root.glob("flow_x_processed/S1/*/*"))[0]
    files = sorted(video.glob("flow_x_*.png"))
    for f in files:  # one video exported as colour-coded flow pictures
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(f), np.dstack([img, 255 - img, img]))
    assert main(["data", "check", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    colour = [p for p in r["problems"] if p["kind"] == "colour_flow"]
    assert [p["path"] for p in colour] == [str(f.relative_to(root)) for f in files]
    assert "re-export it as grey" in colour[0]["message"]
    args = [*tiny_args(root), "model.name=flow_resnet", "data.flow_stack=2", "train.trainable=[.]", "train.epochs=1"]
    assert main(["train", *args, "data.num_workers=2", f"out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(video) in err and "in colour" in err and "Traceback" not in err


def test_a_truncated_png_in_a_worker_is_one_line_with_its_path(tiny_root, tmp_path, capsys):
    root = _copy_tiny(tiny_root, tmp_path)
    bad = sorted(root.glob("processed_frames2/S1/*/*/rgb/rgb0001.png"))[0]
    bad.write_bytes(bad.read_bytes()[:60])
    args = [*tiny_args(root), "train.epochs=1", "data.num_workers=2", "data.sampling=seed", f"out={tmp_path / 'r'}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err == f"error: image {bad} cannot be decoded (truncated or not an image); replace or delete it\n"


def test_report_skips_a_corrupt_summary_naming_it(tiny_root, tmp_path, caplog):
    from fpar.experiments.report import load_run_data

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        assert load_run_data(run).summary is None  # what `fpar report` reads for every run folder
    assert f"skipped {run / 'summary.json'}: it is not valid JSON" in caplog.text


def test_corrupt_pretrained_weights_do_not_suggest_unsafe_loading(tiny_root, tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(b"\x80\x02not a checkpoint")
    assert main(["train", *tiny_args(tiny_root), f"model.pretrained={tmp_path / 'w.pt'}", f"out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "w.pt") in err and "weights_only" not in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------------------
# The sweep ledger


def _sweep_grid(tmp_path: Path) -> Path:
    g = tmp_path / "g.yaml"
    g.write_text(
        f"name: led\nbase: {ROOT / 'fpar' / 'configs' / 'ego_rnn_stage1.yaml'}\ngrid: {{optim.lr: [1.0e-3]}}\n"
    )
    return g


def test_a_kill_while_the_ledger_is_created_leaves_no_broken_ledger(tiny_root, tmp_path):
    g, out = _sweep_grid(tmp_path), tmp_path / "sw"
    ov = [*tiny_args(tiny_root), "train.epochs=1", "train.max_batches=1"]
    code, _ = run_forked(["sweep", str(g), "--out", str(out), *ov], {"FPAR_FAULT": "ledger_created:1"})
    assert code == -9
    assert not (out / "sweep.db").exists() and list(out.glob(".sweep.db.tmp-*"))  # only the temporary file
    from fpar.experiments.sweep import run_sweep

    s = run_sweep(g, out=out, log=lambda m: None, extra_overrides=ov)
    assert s["counts"] == {"done": 1} and not list(out.glob(".sweep.db.tmp-*"))


def test_a_broken_ledger_is_rebuilt_from_the_trial_folders(tiny_root, tmp_path):
    import sqlite3

    from fpar.experiments.sweep import Ledger, run_sweep, storage_url

    g, out = _sweep_grid(tmp_path), tmp_path / "sw"
    ov = [*tiny_args(tiny_root), "train.epochs=1", "train.max_batches=1"]
    run_sweep(g, out=out, log=lambda m: None, extra_overrides=ov)
    con = sqlite3.connect(out / "sweep.db")
    con.execute("DROP INDEX ix_studies_study_name")  # what a kill during Optuna's own schema creation left
    con.commit()
    con.close()
    lines: list[str] = []
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fpar.experiments.sweep").addHandler(handler)
    try:
        s = run_sweep(g, out=out, log=lines.append, extra_overrides=ov)
    finally:
        logging.getLogger("fpar.experiments.sweep").removeHandler(handler)
    assert s["counts"] == {"done": 1} and s["ran"] == []  # nothing retrained: recorded from the folder
    assert any("was broken (its studies table has no unique index" in r.getMessage() for r in records)
    assert list(out.glob("sweep.db.broken-*"))
    att = Ledger(storage_url(out, None), "led").attempts()
    assert [ft.state.name for ft in att["lr1e-03-seed0"]] == ["COMPLETE"]


def test_an_attempt_killed_before_it_was_named_is_closed(tmp_path):
    import optuna

    from fpar.experiments.sweep import Ledger, storage_url

    led = Ledger(storage_url(tmp_path, None), "x")
    led.study.ask()  # a process killed right after ask: RUNNING, no trial name
    assert led.tidy_unnamed(older_than=60) == 0  # a live process might be naming it right now
    assert led.tidy_unnamed(older_than=0) == 1
    assert [t.state for t in led.study.get_trials()] == [optuna.trial.TrialState.FAIL]


# --------------------------------------------------------------------------------------------------------------
# Output folders that cannot be written: run as root without the DAC capabilities (chmod alone tests nothing as root)

CAPSH = Path("/usr/sbin/capsh")
needs_capsh = pytest.mark.skipif(
    not CAPSH.exists() or os.geteuid() != 0, reason="needs root and capsh to drop cap_dac_override"
)


@needs_capsh
def test_read_only_output_folders_are_one_line_errors(tiny_root, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_root, run), log=lambda m: None)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("mine")
    ro.chmod(0o555)
    video = Path(sorted(tiny_root.glob("processed_frames2/S2/*/*"))[0])
    shut = _copy_tiny(tiny_root, tmp_path)
    (shut / "processed_frames2" / "S3").chmod(0)  # an unreadable subject folder
    t = " ".join(tiny_args(tiny_root))
    cases = {
        f"train {t} out={ro}/run": f"cannot create the run folder {ro}/run (Permission denied)",
        f"train {t} out={ro}": f"cannot write in {ro} (Permission denied)",
        f"export {run} --out {ro}/m.pt2 --format torch-export": f"cannot write {ro}/m.pt2 (Permission denied)",
        f"report {run} --out {ro}/rep": f"cannot use {ro}/rep (Permission denied)",
        f"predict {run} {video} --cam {ro}/cams": f"cannot use {ro}/cams (Permission denied)",
        f"data synth {ro}/ds --preset tiny": f"cannot use {ro}/ds.partial (Permission denied)",
        f"data check {shut}": "subject(s) S3 not found",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FPAR_THREADS": "1"}
    # one process without the capabilities runs every command through the CLI and reports (rc, stderr) per command
    driver = (
        "import contextlib, io, json, shlex, sys\n"
        "from fpar.cli import main\n"
        "out = {}\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(shlex.split(args))\n"
        "    out[args] = [rc, err.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    try:
        cmd = f"{sys.executable} -c {shlex.quote(driver)} {shlex.quote(json.dumps(list(cases)))}"
        r = subprocess.run(
            [str(CAPSH), "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", cmd],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        for args, message in cases.items():
            rc, err = got[args]
            assert rc == 2, (args, err)
            assert err.count("\n") == 1 and message in err and "Traceback" not in err, (args, err)
    finally:
        ro.chmod(0o755)
        (shut / "processed_frames2" / "S3").chmod(0o755)
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"] and (ro / "keep.txt").read_text() == "mine"


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tiny_root, tmp_path, monkeypatch, capsys):
    import errno

    run = tmp_path / "run"
    train(_cfg(tiny_root, run), log=lambda m: None)
    before = (run / "last.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):  # the disk fills up while a checkpoint is being written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", "--resume", str(run), "train.epochs=2", "--quiet"]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(run) in err
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp"))


def test_background_checkpoint_writes_hold_the_state_of_save_time_and_report_errors(tmp_path, monkeypatch):
    import errno

    from fpar.engine.checkpoint import BackgroundWriter, load_checkpoint

    w = BackgroundWriter()
    t = torch.arange(6.0)
    w.save({"model": {"w": t}, "config": {"name": "x"}}, tmp_path / "a.pt")
    t.add_(100)  # training goes on: the tensor changes while (or before) the file is written
    w.save({"model": {"w": t}, "config": {"name": "y"}}, tmp_path / "b.pt")  # waits for a.pt first
    w.wait()
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["model"]["w"], torch.arange(6.0))
    assert torch.equal(load_checkpoint(tmp_path / "b.pt")["model"]["w"], torch.arange(6.0) + 100)
    assert not list(tmp_path.glob(".*.tmp"))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    w.save({"model": {"w": t}, "config": {}}, tmp_path / "a.pt")  # returns at once; the error comes at wait
    with pytest.raises(OSError, match="No space left") as e:
        w.wait()
    assert e.value.filename == str(tmp_path / "a.pt")
    w.wait()  # the error was handed over once: nothing left to raise
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["model"]["w"], torch.arange(6.0))  # the old file stays


def test_locks_left_empty_or_malformed_are_aged_by_their_mtime(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    lock = folder / LOCK_NAME
    for junk in ("", "[1, 2]", '{"pid": "x", "heartbeat": null}'):
        lock.write_text(junk)  # a kill between creating the file and writing it, or a foreign file
        with pytest.raises(FparError, match=r"is not a lock fpar can read .* taken over once 60 s old"):
            FolderLock(folder, grace=60).acquire()  # fresh: it may be a lock being written right now
        os.utime(lock, (time.time() - 120, time.time() - 120))
        with FolderLock(folder, grace=60):  # old: stale, taken over
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
