"""Sweeps: every trial of a grid file is a normal ``fpar train`` run folder; Optuna keeps the ledger.

Sweep folder (``sweeps/<name>/`` or ``out``)::

    sweep.json     the expanded trials (name, stage, point, label, seed, run folder, dependencies, published)
    grid.yaml      a copy of the grid file          sweep.db   the Optuna study (SQLite), unless --storage
    <trial>/       one run folder per trial (config.yaml, metrics.jsonl, summary.json, ...; train.log, error.txt)

Ledger: one Optuna trial per attempt, made with ``study.ask`` and closed with ``study.tell``. Its numeric point
values and the seed are Optuna params (single-valued distributions, so no sampler chooses anything); the user
attrs hold the trial name, stage, point, label, seed, fold, run folder, host, pid, a heartbeat, and at the end the
summary metrics or the error text. The objective value is ``best_top1``.

Restarts: a trial is finished when its run folder holds ``summary.json`` (or the study has a COMPLETE attempt
made on another host): it is never run again. A trial with ``last.pt`` and no summary resumes from it
(``train(cfg, resume=run)``). An attempt left RUNNING by a process that is gone (same host: its pid is dead;
another host: no heartbeat for ``stale_after`` seconds) is closed as FAIL ("interrupted") and resumed. A failed
trial is recorded with its error and the others go on; trials that depend on it (later stages) are recorded as
failed too. A re-run of the sweep retries failed trials (resuming from ``last.pt`` where there is one) unless
``retry_failed=False``; interrupted ones are always resumed.

Many machines can share one sweep with ``storage=URL`` (e.g. ``postgresql://...`` or an SQLite file on a shared
disk); trials that another live process runs are skipped (an attempt that finds an older live attempt of the same
trial steps back and is closed as PRUNED), and trials that wait for such a trial stay pending for the next call.
Stage chaining needs the referenced run folders, so machines that chain stages should share the sweep folder too
(``--out`` on a shared disk); a trial finished on another host without a shared folder counts as done there.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import FparError
from ..utils import atomic_write_json, atomic_write_text, fault, pid_alive, read_json_object, refuse_file
from .grid import Grid, Trial, expand, load_grid, trial_config

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
HOST = socket.gethostname()
# what a trial found not pending just before its claim is, in the log
_STATE_WORDS = {
    "done": "another process finished it",
    "done-elsewhere": "another host finished it",
    "running-elsewhere": "another process runs it",
    "failed": "it failed in an earlier call",
}
NAMING_S = 60.0  # an attempt still unnamed this long after Optuna created it belongs to a process that died
SUMMARY_KEYS = (
    "best_top1",
    "best_epoch",
    "final_top1",
    "top5",
    "mean_class_acc",
    "pair_top1",
    "videos",
    "select_on",
    "test_top1",
    "train_time_s",
)
# keys that may differ between a finished run's config.yaml and the trial's config without making it another run
_IGNORED_KEYS = {
    "out",
    "model.backbone_classes",  # resolved by build_model
    "data.flow_stack",  # two-stream: taken from the flow run
    "data.root",  # a moved dataset
    "data.num_workers",
    "train.progress",
    "train.device",
    "train.eval_memo_mb",  # evaluation memory: the same values with or without it
}


# --------------------------------------------------------------------------------------------------------------
# Optuna ledger


def storage_url(sweep: Path, storage: str | None) -> str:
    """``storage`` as an SQLAlchemy URL; default: the SQLite file ``sweep.db`` in the sweep folder."""
    if not storage:
        return f"sqlite:///{(sweep / 'sweep.db').resolve()}"
    if "://" not in storage:  # a plain path: an SQLite file
        return f"sqlite:///{Path(storage).resolve()}"
    return storage


_SQLITE_TABLES = {"studies", "version_info", "trials", "trial_user_attributes", "trial_values", "alembic_version"}


def _sqlite_problem(path: Path) -> str | None:
    """Why an SQLite ledger cannot be used (None when it can): not a database, failed integrity check, or a schema
    left half-made by a kill during its creation (missing tables or the unique index on study names)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                return "its integrity check fails"
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return None  # in use by another process: sound as far as we can tell, and not ours to move
        return f"it cannot be read ({e})"
    except sqlite3.DatabaseError as e:
        return f"not an SQLite database ({e})"
    missing = sorted(_SQLITE_TABLES - names)
    if missing:
        return f"its schema is incomplete (no {', '.join(missing)})"
    if "ix_studies_study_name" not in names:
        return "its studies table has no unique index on the study name"
    return None


def _create_sqlite(path: Path, name: str) -> None:
    """Create the ledger's schema beside ``path`` and move it into place: a kill during the creation leaves only a
    temporary file (removed by the next start), never a half-made ledger."""
    import optuna

    for old in path.parent.glob(f".{path.name}.tmp-{HOST}-*"):  # creations killed earlier on this host
        pid = old.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
    optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    storage.engine.dispose()
    fault("ledger_created")
    try:
        os.link(tmp, path)  # atomic, and refuses to replace a ledger another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_sqlite(path: Path, name: str, log=logger.warning) -> None:
    """Make sure the SQLite ledger at ``path`` exists and is sound; a broken one is moved aside and made anew (the
    sweep then records its finished trials again from their run folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        why = _sqlite_problem(path)
        if why is None:
            return
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{HOST}-{os.getpid()}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another process is rebuilding it right now
            pass
        if path.exists() and _sqlite_problem(path) is None:
            return  # ... and has already put a sound one in place
        log(f"the sweep ledger {path} was broken ({why}); moved it to {aside.name} and made a new one: finished "
            "trials are recorded again from their run folders")  # fmt: skip
    _create_sqlite(path, name)


def _transient(e: Exception) -> bool:
    """A database error worth one more try (a concurrent schema creation, a dropped connection)."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"IntegrityError", "OperationalError", "DuplicatedStudyError", "StorageInternalError"})


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class Ledger:
    """The Optuna study of a sweep, with a lock so that the heartbeat thread and the scheduler can share it.

    The ledger keeps the attempts this process started and has not closed (`open_attempts`): `heartbeat` beats all
    of them, so no path that trains a trial (in a worker, or inline in the scheduler's own call) can leave its
    attempt without beats, which any other process sharing the storage would take for a dead one."""

    def __init__(self, url: str, name: str, *, shared: bool = False, stale_after: float = 900.0):
        import optuna

        self.shared = shared  # other machines may use this storage too
        self.stale_after = stale_after
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
            if url.startswith("sqlite:///"):
                try:
                    _prepare_sqlite(Path(url[len("sqlite:///") :]), name)
                except OSError as e:
                    raise FparError(f"cannot create the sweep ledger {url[len('sqlite:///') :]} ({e})") from None
        attempts = 1 if url.startswith("sqlite") else 4
        for attempt in range(attempts):
            try:
                storage = optuna.storages.RDBStorage(url, **kwargs)
                self.study = optuna.create_study(
                    storage=storage,
                    study_name=name,
                    direction="maximize",
                    load_if_exists=True,
                    sampler=optuna.samplers.RandomSampler(seed=0),
                )
                break
            except Exception as e:  # bad URL, unreachable server, missing driver, or a race on the schema
                # Several machines starting one sweep on a fresh server race to create its tables (and the study):
                # the losers fail on a duplicate; a short wait and a second look finds the winner's schema.
                if attempt + 1 < attempts and _transient(e):
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise FparError(f"cannot open the sweep storage {_redact(url)} ({type(e).__name__}: {e})") from None
        self.lock = threading.RLock()
        self._open: dict[int, Any] = {}  # trial id -> the optuna Trial of an attempt this process runs

    def attempts(self) -> dict[str, list[Any]]:
        """Trial name -> its attempts (FrozenTrial), oldest first."""
        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
        out: dict[str, list[Any]] = {}
        for ft in trials:
            name = ft.user_attrs.get("trial")
            if name and ft.state.name != "PRUNED":  # PRUNED: stepped back for another process, never ran
                out.setdefault(name, []).append(ft)
        for v in out.values():
            v.sort(key=lambda ft: ft.number)
        return out

    def start(self, t: Trial, run: Path) -> Any:
        from optuna.distributions import FloatDistribution, IntDistribution

        dists: dict[str, Any] = {"seed": IntDistribution(t.seed, t.seed)}
        for k, v in t.values.items():
            kind = _schema_type(k)
            if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
                dists[k] = FloatDistribution(float(v), float(v))
            elif kind is int and isinstance(v, int) and not isinstance(v, bool):
                dists[k] = IntDistribution(v, v)
        now = time.time()
        # "trial" goes last: an attempt is listed under its trial's name only once everything a rival needs to
        # judge it (host, pid, heartbeat) is written.
        attrs = {
            "stage": t.stage,
            "point": t.point,
            "label": t.label,
            "seed": t.seed,
            "fold": t.fold,
            "run": str(run),
            "host": HOST,
            "pid": os.getpid(),
            "values": json.dumps(t.to_dict()["values"], default=str),
            "started": now,
            "heartbeat": now,
            "trial": t.name,
        }
        with self.lock:
            ot = self.study.ask(dists)
            for k, v in attrs.items():
                ot.set_user_attr(k, v)
        self._wait_for_naming(ot.number)
        rivals = [
            ft
            for ft in self.attempts().get(t.name, [])
            if ft.state.name == "RUNNING" and ft.number < ot.number and _alive(ft, self.stale_after)
        ]
        if rivals:  # another live process claimed it first: step back (PRUNED = not run, not failed)
            from optuna.trial import TrialState

            with self.lock:
                ot.set_user_attr("note", f"not run: attempt #{rivals[0].number} on {rivals[0].user_attrs.get('host')}")
                self.study.tell(ot, state=TrialState.PRUNED)
            return None
        with self.lock:
            self._open[ot._trial_id] = ot
        return ot

    def open_attempts(self) -> list[Any]:
        """The attempts this process started and has not finished or failed yet."""
        with self.lock:
            return list(self._open.values())

    def _wait_for_naming(self, number: int, patience: float = NAMING_S) -> None:
        """Wait until every RUNNING attempt numbered below ``number`` carries its trial name (or is older than
        ``patience`` seconds: its process died while naming it, and `tidy_unnamed` closes it).

        Optuna numbers attempts under a lock on the study row, so an attempt numbered below ours was committed
        before ours; but its process writes the attributes one by one afterwards. Deciding before they are all
        there would take a live claim of the same trial for none, and both processes would train it."""
        from optuna.trial import TrialState

        # The ages come from Optuna's datetime_start, the creating host's local clock: the deadline bounds the wait
        # when that clock (or time zone) is off from this one's.
        deadline = time.time() + patience
        while time.time() < deadline:
            with self.lock:
                running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            now = time.time()
            unnamed = [
                ft
                for ft in running
                if ft.number < number
                and "trial" not in ft.user_attrs
                and ft.datetime_start is not None
                and now - ft.datetime_start.timestamp() < patience
            ]
            if not unnamed:
                return
            time.sleep(0.1)

    def finish(self, ot: Any, summary: dict[str, Any], seconds: float) -> None:
        with self.lock:
            for k in SUMMARY_KEYS:
                if summary.get(k) is not None:
                    ot.set_user_attr(k, summary[k])
            ot.set_user_attr("seconds", round(seconds, 1))
            self.study.tell(ot, float(summary["best_top1"]))
            self._open.pop(ot._trial_id, None)

    def fail(self, ot: Any, error: str, *, interrupted: bool = False, tb: str | None = None) -> None:
        from optuna.trial import TrialState

        with self.lock:
            ot.set_user_attr("error", error[:2000])
            if tb:
                ot.set_user_attr("traceback", tb[-4000:])
            if interrupted:
                ot.set_user_attr("interrupted", True)
            self.study.tell(ot, state=TrialState.FAIL)
            self._open.pop(ot._trial_id, None)

    def close_stale(self, ft: Any, summary: dict[str, Any] | None) -> None:
        """Close an attempt left RUNNING by a process that is gone: COMPLETE when its run finished, else FAIL."""
        import optuna
        from optuna.trial import TrialState

        with self.lock:
            ot = optuna.trial.Trial(self.study, ft._trial_id)
            if summary is not None:
                self.finish(ot, summary, 0.0)
                return
            ot.set_user_attr("error", "interrupted: the process that ran it stopped")
            ot.set_user_attr("interrupted", True)
            self.study.tell(ot, state=TrialState.FAIL)

    def record_done(self, t: Trial, run: Path, summary: dict[str, Any]) -> None:
        """A finished run folder that the study does not know (e.g. a new storage): add a COMPLETE attempt."""
        import optuna
        from optuna.distributions import IntDistribution

        attrs = {"trial": t.name, "stage": t.stage, "point": t.point, "label": t.label, "seed": t.seed}
        attrs.update({"fold": t.fold, "run": str(run), "host": HOST, "recorded_from_folder": True})
        attrs.update({k: summary[k] for k in SUMMARY_KEYS if summary.get(k) is not None})
        ft = optuna.trial.create_trial(
            value=float(summary["best_top1"]),
            params={"seed": t.seed},
            distributions={"seed": IntDistribution(t.seed, t.seed)},
            user_attrs=attrs,
        )
        with self.lock:
            self.study.add_trial(ft)

    def tidy_unnamed(self, older_than: float = NAMING_S) -> int:
        """Fail attempts left RUNNING by a process killed between Optuna's ``ask`` and naming its trial (they carry
        no trial name, so nothing else would ever close them). Returns how many were closed."""
        import optuna
        from optuna.trial import TrialState

        now = time.time()
        n = 0
        with self.lock:
            for ft in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                started = ft.datetime_start.timestamp() if ft.datetime_start else 0.0
                if "trial" not in ft.user_attrs and now - started > older_than:
                    ot = optuna.trial.Trial(self.study, ft._trial_id)
                    ot.set_user_attr("note", "abandoned before it was named")
                    self.study.tell(ot, state=TrialState.FAIL)
                    n += 1
        return n

    def heartbeat(self) -> None:
        """Refresh the heartbeat of every attempt this process runs."""
        with self.lock:
            for ot in self._open.values():
                try:
                    ot.set_user_attr("heartbeat", time.time())
                except Exception as e:  # a finished trial, a busy database: the next beat will do
                    logger.debug("heartbeat failed: %s", e)


def _schema_type(key: str) -> type | None:
    from ..config import ExperimentConfig, get

    if key == "seed":
        return int
    try:
        v = get(ExperimentConfig(), key)
    except AttributeError:
        return None
    return type(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _alive(ft: Any, stale_after: float) -> bool:
    """Is the process that runs this RUNNING attempt still there?"""
    a = ft.user_attrs
    if a.get("host") == HOST:
        pid = a.get("pid")
        if not isinstance(pid, int) or pid == os.getpid() or not pid_alive(pid):
            return False
        return time.time() - float(a.get("heartbeat", 0)) < stale_after
    return time.time() - float(a.get("heartbeat", 0)) < stale_after


# --------------------------------------------------------------------------------------------------------------
# One trial (in this process or in a worker process)


def config_differences(run: Path, cfg: Any) -> list[str]:
    """Keys whose value in ``run/config.yaml`` differs from ``cfg`` (ignoring paths and resolved values)."""
    from ..config import flat_dict, load_config, run_reference_keys, to_dict

    try:
        old = flat_dict(to_dict(load_config(run / "config.yaml")))
    except FparError as e:
        return [f"config.yaml cannot be read ({e})"]
    new = flat_dict(to_dict(cfg))
    ignored = _IGNORED_KEYS | run_reference_keys()
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in new if k not in ignored and old.get(k) != new[k]]


def _prepare_folder(run: Path, cfg: Any) -> str:
    """What to do with the trial's run folder: ``done``, ``resume`` or ``fresh``."""
    if (run / "summary.json").is_file():
        return "done"
    if (run / "last.pt").is_file():
        diff = config_differences(run, cfg)
        if diff:
            raise FparError(
                f"run folder {run} holds a run with other settings ({'; '.join(diff[:3])}); delete it or sweep into "
                "another --out"
            )
        # a run killed after its last epoch but before summary.json resumes too: the trainer then only
        # writes the summary
        return "resume"
    if (run / "tb").is_dir():
        shutil.rmtree(run / "tb", ignore_errors=True)  # events of an attempt that died in its first epoch
    return "fresh"


def execute_trial(trial: Trial, runs: dict[str, str], run: str | Path) -> dict[str, Any]:
    """Train one trial in its run folder (resuming it when it stopped part-way). Never raises for a failed
    training: returns ``{"ok": False, "error": ..., "traceback": ...}`` instead (KeyboardInterrupt passes)."""
    t0 = time.time()
    run = Path(run)
    mode = "fresh"
    try:
        from ..engine.trainer import train

        cfg = trial_config(trial, runs, out=run)
        mode = _prepare_folder(run, cfg)
        if mode == "done":
            return {"ok": True, "mode": mode, "summary": json.loads((run / "summary.json").read_text()), "seconds": 0}
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "train.log", "a") as fh:

            def log(msg: str) -> None:
                fh.write(msg + "\n")
                fh.flush()

            log(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {mode} {trial.name} on {HOST} (pid {os.getpid()})")
            summary = train(cfg, resume=run if mode == "resume" else None, progress=False, log=log)
        (run / "error.txt").unlink(missing_ok=True)
        return {"ok": True, "mode": mode, "summary": summary, "seconds": time.time() - t0}
    except KeyboardInterrupt:
        raise
    except Exception as e:
        msg = str(e) if isinstance(e, FparError) else f"{type(e).__name__}: {e}"
        msg = " ".join(msg.split()) or type(e).__name__
        tb = traceback.format_exc()
        try:
            if run.is_dir():
                atomic_write_text(run / "error.txt", tb)
        except OSError:
            pass
        return {"ok": False, "mode": mode, "error": msg, "traceback": tb, "seconds": time.time() - t0}


def _worker_init(parent: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def watch() -> None:  # a worker whose sweep process was killed stops too (it would race a restarted sweep)
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


class _Inline:
    """The executor for ``workers=1``: trials run in this process, one after the other."""

    def submit(self, fn, *args) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


# --------------------------------------------------------------------------------------------------------------
# The sweep


def sweep_dir_for(grid: Grid, out: str | os.PathLike | None) -> Path:
    return Path(out) if out else Path("sweeps") / grid.name


def _read_summary(run: Path) -> dict[str, Any] | None:
    return read_json_object(run / "summary.json")


def write_manifest(sweep: Path, grid: Grid, trials: list[Trial], url: str, extra: list[str], seeds) -> None:
    """``sweep.json`` and ``grid.yaml``. A folder holding another grid's sweep is refused: its trials and run
    folders would be orphaned under this grid's manifest (a damaged manifest is rewritten)."""
    before = read_json_object(sweep / SWEEP_FILE)
    if before is not None and before.get("name") not in (None, grid.name):
        raise FparError(
            f"{sweep} holds the sweep of grid '{before['name']}', not '{grid.name}'; nothing was changed: give this "
            "grid another --out"
        )
    points: dict[tuple[str, str], dict[str, Any]] = {}
    for t in trials:
        points.setdefault(
            (t.stage, t.point),
            {
                "stage": t.stage,
                "point": t.point,
                "label": t.label,
                "values": t.to_dict()["values"],
                "published": t.published,
                "report": t.report,
                "base": t.base,
            },
        )
    manifest = {
        "name": grid.name,
        "title": grid.title,
        "description": grid.description,
        "grid": str(grid.path),
        "storage": _redact(url),
        "study": grid.name,
        "extra_overrides": list(extra),
        "seeds": seeds,
        "folds": grid.fold_labels,  # the folds' labels (loso: the test subjects), as the trials' "fold"
        "fold_key": grid.fold_key,  # data.test_subjects for loso, else the key of folds: {key: ..., values: ...}
        "columns": grid.columns,
        "pivot": grid.pivot,
        "stages": [s.name for s in grid.stages],
        "points": list(points.values()),
        "trials": [{**t.to_dict(), "run": t.name} for t in trials],
    }
    atomic_write_json(sweep / SWEEP_FILE, manifest)
    atomic_write_text(sweep / "grid.yaml", grid.path.read_text())


def run_sweep(
    grid_path: str | os.PathLike,
    *,
    workers: int = 1,
    storage: str | None = None,
    out: str | os.PathLike | None = None,
    log=print,
    extra_overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    retry_failed: bool = True,
    max_trials: int | None = None,
    stale_after: float = 900.0,
    heartbeat_s: float = 30.0,
    threads_per_worker: int = 1,
    wait: bool | None = None,
    poll_s: float = 5.0,
) -> dict[str, Any]:
    """Run every unfinished trial of a grid file; returns :func:`sweep_status` of the sweep afterwards.

    Args:
        grid_path: the grid file (see :mod:`fpar.experiments.grid`).
        workers: trials run at the same time, each in its own process (1: in this process).
        storage: Optuna storage URL shared by many machines (default: ``sweep.db`` in the sweep folder).
        out: sweep folder (default ``sweeps/<name>``); each trial trains into ``<out>/<trial name>/``.
        log: called with one line per event (start, result, failure).
        extra_overrides: ``key=value`` for every trial, after the grid's own values.
        seeds: replaces the grid's seeds.
        retry_failed: run trials whose last attempt failed again (interrupted ones are always resumed).
        max_trials: start at most this many trials in this call (the rest stay pending for the next call).
        stale_after: seconds without a heartbeat after which another host's RUNNING attempt is taken as dead.
        wait: when nothing else is left, wait for the trials other processes run (polling every ``poll_s`` s) and
            take over those whose process dies; default: with a shared ``storage`` only.
    """
    if workers < 1:
        raise FparError(f"--workers must be at least 1 (got {workers})")
    grid = load_grid(grid_path)
    trials = expand(grid, extra_overrides=extra_overrides, seeds=seeds)
    sweep = sweep_dir_for(grid, out).resolve()
    refuse_file(sweep, "--out", "the sweep")
    sweep.mkdir(parents=True, exist_ok=True)
    url = storage_url(sweep, storage)
    write_manifest(sweep, grid, trials, url, list(extra_overrides), seeds)
    ledger = Ledger(url, grid.name, shared=bool(storage), stale_after=stale_after)
    wait = bool(storage) if wait is None else wait
    tidied = ledger.tidy_unnamed()
    if tidied:
        log(f"closed {tidied} attempt(s) whose process stopped before naming its trial")
    runs = {t.name: sweep / t.name for t in trials}
    local = {name: str(p) for name, p in runs.items()}

    # ---- what is done, what runs elsewhere, what is left
    state: dict[str, str] = {}

    def assess(t: Trial, recs: list[Any]) -> str:
        """The state of a trial from its run folder and its attempts; closes attempts whose process is gone."""
        run = runs[t.name]
        summary = _read_summary(run)
        stale = [ft for ft in recs if ft.state.name == "RUNNING" and not _alive(ft, stale_after)]
        for ft in stale:
            ledger.close_stale(ft, summary)
            log(f"{t.name}: closed an attempt whose process stopped ({'finished' if summary else 'interrupted'})")
        if stale:
            recs = ledger.attempts().get(t.name, [])
        if summary is not None:
            diff = config_differences(run, trial_config(t, local, out=run))
            if diff:
                raise FparError(
                    f"{run} finished with other settings than the grid now gives ({'; '.join(diff[:3])}); delete it "
                    "or sweep into another --out"
                )
            if not any(ft.state.name == "COMPLETE" for ft in recs):
                ledger.record_done(t, run, summary)
            return "done"
        if any(ft.state.name == "RUNNING" for ft in recs):
            return "running-elsewhere"
        if any(ft.state.name == "COMPLETE" and ft.user_attrs.get("host") != HOST for ft in recs):
            return "done-elsewhere"
        if recs and recs[-1].state.name == "FAIL" and not retry_failed and not recs[-1].user_attrs.get("interrupted"):
            return "failed"
        return "pending"

    attempts = ledger.attempts()
    for t in trials:
        state[t.name] = assess(t, attempts.get(t.name, []))
    n_done = sum(s == "done" for s in state.values())
    todo = [t for t in trials if state[t.name] == "pending"]
    log(
        f"sweep {grid.name}: {len(trials)} trials in {sweep}; {n_done} finished, {len(todo)} to run"
        + (f" ({workers} workers)" if workers > 1 else "")
    )

    # ---- run them, dependencies first
    executor: Any
    if workers == 1:
        executor = _Inline()
    else:
        import multiprocessing as mp

        executor = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(), threads_per_worker),
        )
    running: dict[cf.Future, tuple[Trial, Any]] = {}
    stop = threading.Event()

    def beat() -> None:
        # every attempt the ledger has open, the inline one too (with workers=1 it trains inside `submit`, before
        # it enters `running`)
        while not stop.wait(heartbeat_s):
            ledger.heartbeat()

    hb = threading.Thread(target=beat, daemon=True)
    hb.start()
    started = 0
    ran: list[str] = []
    try:
        while True:
            progressed = False
            for t in list(todo):
                dep_states = [state[d] for d in t.deps]
                bad = [d for d in t.deps if state[d] == "failed"]
                if bad:
                    ot = ledger.start(t, runs[t.name])
                    if ot is not None:
                        ledger.fail(ot, f"not run: trial {bad[0]}, whose run it needs, failed")
                    state[t.name] = "failed"
                    todo.remove(t)
                    log(f"{t.name}: not run, it needs {bad[0]}, which failed")
                    progressed = True
                    continue
                if any(s != "done" for s in dep_states):
                    continue
                if len(running) >= workers or (max_trials is not None and started >= max_trials):
                    continue
                todo.remove(t)
                # What the first look found may be out of date by now: another process may have finished this
                # trial, claimed it, or died holding it; a dead one's attempt is closed here (else it would stay
                # RUNNING for good once this process has trained the trial).
                now = assess(t, ledger.attempts().get(t.name, []))
                if now != "pending":
                    state[t.name] = now
                    n_done += now == "done"
                    log(f"{t.name}: {_STATE_WORDS.get(now, now)}; skipped")
                    continue
                ot = ledger.start(t, runs[t.name])
                if ot is None:
                    state[t.name] = "running-elsewhere"
                    log(f"{t.name}: {_STATE_WORDS['running-elsewhere']}; skipped")
                    continue
                state[t.name] = "running"
                started += 1
                resume = (runs[t.name] / "last.pt").is_file()
                log(f"[{n_done + started}/{len(trials)}] {t.name}: {'resuming' if resume else 'training'}")
                fut = executor.submit(execute_trial, t, local, str(runs[t.name]))
                running[fut] = (t, ot)
                progressed = True
                if workers == 1:
                    break  # re-check dependencies after each inline trial
            if not running:
                if progressed:
                    continue
                others = [t for t in trials if state[t.name] == "running-elsewhere"]
                if not (wait and others):
                    break
                # A shared sweep: trials another process runs are waited for, and taken over (resumed from their
                # last.pt) when that process dies: its pid is gone (this host) or its heartbeat is stale (any host).
                time.sleep(poll_s)
                attempts = ledger.attempts()
                for t in others:
                    now = assess(t, attempts.get(t.name, []))
                    if now != "running-elsewhere":
                        state[t.name] = now
                        if now == "pending":
                            todo.append(t)
                            log(f"{t.name}: its process stopped; this one takes it over")
                        elif now == "done":
                            n_done += 1
                continue
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                t, ot = running.pop(fut)
                try:
                    r = fut.result()
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # a worker process died (out of memory, killed)
                    r = {"ok": False, "error": f"worker process failed: {type(e).__name__}: {e}", "seconds": 0}
                if r["ok"]:
                    s = r["summary"]
                    ledger.finish(ot, s, r["seconds"])
                    state[t.name] = "done"
                    ran.append(t.name)
                    log(
                        f"{t.name}: best top-1 {s['best_top1']:.2f}% at epoch {s['best_epoch']} "
                        f"(final {s['final_top1']:.2f}%) in {r['seconds']:.0f} s"
                    )
                else:
                    ledger.fail(ot, r["error"], tb=r.get("traceback"))
                    state[t.name] = "failed"
                    log(f"{t.name}: FAILED: {r['error']}")
    except BaseException:
        for ot in ledger.open_attempts():  # the inline trial's too
            try:
                ledger.fail(ot, "interrupted: the sweep was stopped", interrupted=True)
            except Exception:
                pass
        # stop the workers now (they may not have seen the signal); their run folders keep their last epoch
        procs = getattr(executor, "_processes", None) or {}  # ProcessPoolExecutor's workers (absent inline)
        for proc in list(procs.values()):
            proc.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        stop.set()
    executor.shutdown(wait=True)
    left = [t.name for t in todo]
    if left:
        why = "--max-trials reached" if max_trials is not None and started >= max_trials else "waiting on other hosts"
        log(f"{len(left)} trial(s) not run in this call ({why}): run the sweep again to continue")
    status = sweep_status(sweep, storage=url, ledger=ledger)
    status["ran"] = ran
    return status


# --------------------------------------------------------------------------------------------------------------
# Status


def read_manifest(sweep: str | os.PathLike) -> dict[str, Any]:
    p = Path(sweep) / SWEEP_FILE
    if not p.is_file():
        raise FparError(f"{sweep} is not a sweep folder (no {SWEEP_FILE}); give the folder `fpar sweep` wrote")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FparError(
            f"{p} cannot be read ({type(e).__name__}); run `fpar sweep GRID --out {sweep}` again to rewrite it"
        ) from None
    if not isinstance(m, dict) or not isinstance(m.get("trials"), list):
        raise FparError(f"{p} is not a sweep manifest; run `fpar sweep GRID --out {sweep}` again to rewrite it")
    return m


def sweep_status(sweep: str | os.PathLike, *, storage: str | None = None, ledger: Ledger | None = None) -> dict:
    """The state of every trial of a sweep folder: done / running / failed / pending, metrics, errors.

    Reads the run folders (the truth for ``done``) and the Optuna study (attempts, errors, running elsewhere).
    """
    sweep = Path(sweep).resolve()
    m = read_manifest(sweep)
    if ledger is None:
        url = storage or m.get("storage") or storage_url(sweep, None)
        if "***" in url:
            raise FparError(f"{sweep} uses a storage with a password; give it again with --storage URL")
        if url.startswith("sqlite") and not Path(url.split("sqlite:///", 1)[-1]).is_file():
            attempts: dict[str, list[Any]] = {}
        else:
            attempts = Ledger(url, m["study"]).attempts()
    else:
        attempts = ledger.attempts()
    rows = []
    for t in m["trials"]:
        run = sweep / t["run"]
        recs = attempts.get(t["name"], [])
        last = recs[-1] if recs else None
        summary = _read_summary(run)
        if summary is not None:
            st = "done"
        elif last is not None and last.state.name == "RUNNING":
            st = "running"
        elif last is not None and last.state.name == "COMPLETE":
            st = "done-elsewhere"
        elif last is not None and last.state.name == "FAIL":
            st = "interrupted" if last.user_attrs.get("interrupted") else "failed"
        else:
            st = "pending"
        src = summary or (last.user_attrs if last is not None and last.state.name == "COMPLETE" else {})
        rows.append(
            {
                "name": t["name"],
                "stage": t["stage"],
                "point": t["point"],
                "label": t["label"],
                "seed": t["seed"],
                "fold": t.get("fold"),
                "state": st,
                "best_top1": src.get("best_top1"),
                "best_epoch": src.get("best_epoch"),
                "attempts": len(recs),
                "error": last.user_attrs.get("error") if st in ("failed", "interrupted") else None,
                "run": str(run),
            }
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"sweep": str(sweep), "name": m["name"], "trials": rows, "counts": counts}


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"sweep {status['name']} in {status['sweep']}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(status["counts"].items()))
    ]
    w = max((len(r["name"]) for r in status["trials"]), default=10)
    for r in status["trials"]:
        acc = f"{r['best_top1']:6.2f}% @ {r['best_epoch']}" if r["best_top1"] is not None else ""
        err = f"  {r['error']}" if r["error"] else ""
        lines.append(f"  {r['name']:<{w}}  {r['state']:<14} {acc}{err}")
    return "\n".join(lines)
