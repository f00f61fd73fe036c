"""Reports of sweeps and runs: tables in the report's shape, figures, one self-contained ``index.html``.

``make_report([sweep or run folders], out_dir)`` writes::

    table.md     one table per sweep (and one for loose run folders): a row per grid point with the mean and the
                 sample standard deviation (ddof=1) over seeds of best_top1 (and final_top1, top5, mean_class_acc,
                 pair_top1, test_top1 when present; then verb/noun/action metrics such as verb_top1, action_top5,
                 unseen_action_top1 when some run has them), n seeds, the report's number beside ours; best row in
                 bold. Grids with ``folds:`` average each seed over its folds first and add a column per fold
                 (``test S1`` for leave-one-subject-out, ``split 1`` for ``folds: {key: data.split, ...}``)
    table.csv    the same rows, one line each, with ``best`` and ``select_on`` columns
    figures/     validation accuracy and loss per epoch (one line per point: the mean over its runs; Figures 8-9),
                 every run's headline accuracy per point (dots, mean ± std, the report's number), per run:
                 train/val accuracy and loss with the LR phases coloured, LR steps as grey lines and the selected
                 epoch starred (Figure 16), the MS loss per epoch (Figure 19, when the run has one), the best epoch's
                 confusion matrix
    index.html   the tables and every figure, with relative links (no network)

Every table states the test-set size and which split selected the epochs (``select_on``): with ``test`` (the
report's protocol) the best epoch is chosen on the test subjects themselves, so the accuracies are optimistic, and
the headline column, the pivot note and every figure title and caption say "selected on test" (in a table that
mixes protocols, the rows selected on test say it). Value axes of the figures survive an outlier run: see
`fpar.experiments.figures.robust_range` (log axes for losses spanning decades; far-off values marked at the edge).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import canonical_key, flat_dict, run_reference_keys
from ..errors import FparError
from ..utils import atomic_write_text, refuse_file

METRICS = (
    ("best_top1", "best top-1"),
    ("final_top1", "final top-1"),
    ("top5", "top-5"),
    ("mean_class_acc", "mean class"),
    ("pair_top1", "motion pairs"),
    ("test_top1", "test top-1"),
)
# verb/noun/action metrics (EPIC-Kitchens / EGTEA style summaries): columns after METRICS, only when some run of the
# table has them; other ``[unseen_|tail_](verb|noun|action)_topK`` keys follow in sorted order
EXTRA_METRICS = (
    ("verb_top1", "verb top-1"),
    ("verb_top5", "verb top-5"),
    ("noun_top1", "noun top-1"),
    ("noun_top5", "noun top-5"),
    ("action_top1", "action top-1"),
    ("action_top5", "action top-5"),
    ("unseen_verb_top1", "unseen verb top-1"),
    ("unseen_noun_top1", "unseen noun top-1"),
    ("unseen_action_top1", "unseen action top-1"),
    ("tail_verb_top1", "tail verb top-1"),
    ("tail_noun_top1", "tail noun top-1"),
    ("tail_action_top1", "tail action top-1"),
)
_EXTRA_METRIC = re.compile(r"^(unseen_|tail_)?(verb|noun|action)_top(\d+)$")
# config keys that do not make two loose runs different grid points
logger = logging.getLogger(__name__)

_GROUP_IGNORED = {"seed", "name", "out", "data.root", "train.progress"}
_GROUP_IGNORED |= {"data.num_workers", "train.device", "model.backbone_classes"}


# --------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class RunData:
    path: Path
    name: str
    summary: dict[str, Any] | None
    history: list[dict[str, Any]]
    config: dict[str, Any]
    fold: str | None = None  # the fold label the sweep recorded for the trial (None: not known)

    @property
    def finished(self) -> bool:
        return self.summary is not None


def _epoch_row(row: Any) -> bool:
    """Whether a metrics.jsonl row is one an epoch wrote: an integer epoch and numbers (or null) for its metrics."""
    if not isinstance(row, dict) or type(row.get("epoch")) is not int:
        return False
    return all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        for k, v in row.items()
        if k.endswith(("top1", "top5", "loss", "_s", "acc"))
    )


def load_run_data(path: str | os.PathLike, name: str | None = None) -> RunData:
    """Summary, metrics.jsonl rows and config.yaml of a run folder (missing files give empty parts)."""
    p = Path(path)
    summary = None
    if (p / "summary.json").is_file():
        try:
            summary = json.loads((p / "summary.json").read_text())
        except (ValueError, UnicodeDecodeError):
            logger.warning("skipped %s: it is not valid JSON (a corrupt or hand-edited summary)", p / "summary.json")
            summary = None
        if summary is not None and not isinstance(summary, dict):
            logger.warning("skipped %s: it holds no summary (a JSON %s)", p / "summary.json", type(summary).__name__)
            summary = None
    history = []
    if (p / "metrics.jsonl").is_file():
        for line in (p / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if _epoch_row(row):
                    history.append(row)
                else:
                    logger.warning("skipped a line of %s: it is not an epoch's metrics", p / "metrics.jsonl")
    config: dict[str, Any] = {}
    if (p / "config.yaml").is_file():
        try:
            config = yaml.safe_load((p / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            config = {}
    return RunData(p, name or p.name, summary, history, config)


@dataclass
class Row:
    """One grid point: its runs (one per seed, or per seed and fold) and their statistics."""

    stage: str
    point: str
    label: str
    values: dict[str, Any]
    runs: list[RunData]
    expected: int
    published: float | None = None
    seeds: list[int] = field(default_factory=list)
    folds: list[str] | None = None
    fold_key: str | None = None  # data.test_subjects (loso) or the key of folds: {key: ..., values: ...}
    metrics: list[tuple[str, str]] = field(default_factory=lambda: list(METRICS))
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)
    fold_means: dict[str, float | None] = field(default_factory=dict)
    best: bool = False

    @property
    def n(self) -> int:
        return self.stats.get("best_top1", (None, None, 0))[2]


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row]
    columns: dict[str, str]  # varying config key -> display name
    description: str = ""
    pivot: dict[str, Any] | None = None
    folds: list[str] | None = None
    fold_key: str | None = None
    source: str = ""
    metrics: list[tuple[str, str]] = field(default_factory=lambda: list(METRICS))  # METRICS, then extra ones present

    @property
    def runs(self) -> list[RunData]:
        return [r for row in self.rows for r in row.runs]


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values) and the count."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, s, len(v)


def _metric_title(key: str) -> str:
    m = _EXTRA_METRIC.match(key)
    if not m:
        return key
    return f"{(m.group(1) or '').rstrip('_') + ' ' if m.group(1) else ''}{m.group(2)} top-{m.group(3)}"


def table_metrics(runs: list[RunData]) -> list[tuple[str, str]]:
    """METRICS, then the verb/noun/action metrics that some run's summary holds (EXTRA_METRICS first, in order)."""
    present = {k for r in runs if r.summary for k, v in r.summary.items() if isinstance(v, (int, float))}
    known = [k for k, _ in (*METRICS, *EXTRA_METRICS)]
    extra = [(k, t) for k, t in EXTRA_METRICS if k in present]
    extra += [(k, _metric_title(k)) for k in sorted(present) if _EXTRA_METRIC.match(k) and k not in known]
    return [*METRICS, *extra]


def fold_title(label: str, fold_key: str | None) -> str:
    """The column of one fold: ``test S1`` for leave-one-subject-out, ``split 1`` for ``folds: {key: data.split}``."""
    if fold_key is None or canonical_key(fold_key) == canonical_key("data.test_subjects"):
        return f"test {label}"
    return f"{fold_key.split('.')[-1]} {label}"


def _run_fold(r: RunData, fold_key: str | None) -> str:
    """The fold of a run: the label sweep.json recorded for its trial, else read from its config (old sweeps)."""
    if r.fold is not None:
        return str(r.fold)
    from .grid import format_value

    key = fold_key or "data.test_subjects"
    v = flat_dict(r.config).get(canonical_key(key))
    if canonical_key(key) == canonical_key("data.test_subjects"):
        return str((v or ["?"])[0])
    return "?" if v is None else format_value(v)


def _row_stats(row: Row) -> None:
    done = [r for r in row.runs if r.finished]
    if row.folds:
        # cross-validation (leave-one-subject-out or folds: {key: ...}): per seed, the mean over its folds (only
        # seeds with every fold finished)
        per_seed: dict[int, dict[str, dict[str, Any]]] = {}
        for r in done:
            fold = _run_fold(r, row.fold_key)
            per_seed.setdefault(int(r.summary.get("seed", 0)), {})[fold] = r.summary
        complete = {s: f for s, f in per_seed.items() if set(row.folds) <= set(f)}
        for key, _ in row.metrics:
            vals = []
            for folds in complete.values():
                xs = [folds[f].get(key) for f in row.folds]
                if all(x is not None for x in xs):
                    vals.append(sum(xs) / len(xs))
            row.stats[key] = mean_std(vals)
        for f in row.folds:
            row.fold_means[f] = mean_std([d[f].get("best_top1") for d in per_seed.values() if f in d])[0]
        return
    for key, _ in row.metrics:
        row.stats[key] = mean_std([r.summary.get(key) for r in done])


def _sweep_table(path: Path) -> Table:
    from .sweep import read_manifest

    m = read_manifest(path)
    points = [p for p in m["points"] if p.get("report", True)]
    rows = []
    for p in points:
        trials = [t for t in m["trials"] if t["stage"] == p["stage"] and t["point"] == p["point"]]
        runs = [load_run_data(path / t["run"], t["name"]) for t in trials]
        for r, t in zip(runs, trials):
            r.fold = None if t.get("fold") is None else str(t["fold"])
        values = dict(p.get("values") or {})
        for k in values:  # what the runs really used (a command-line override may have replaced the grid's value)
            used = {
                json.dumps(flat_dict(r.config).get(canonical_key(k), values[k]), default=str) for r in runs if r.config
            }
            if len(used) == 1:
                values[k] = json.loads(used.pop())
        rows.append(
            Row(
                stage=p["stage"],
                point=p["point"],
                label=p["label"],
                values=values,
                runs=[r for r in runs if r.finished],
                expected=len(trials),
                published=p.get("published"),
                seeds=sorted({t["seed"] for t in trials}),
                folds=m.get("folds"),
                fold_key=m.get("fold_key"),
            )
        )
    keys: list[str] = []
    for r in rows:
        for k in r.values:
            if k not in keys:
                keys.append(k)
    shown = m.get("columns")
    if shown is not None:  # the grid chose the columns (and their order)
        keys = [k for k in shown if k in keys]
    from .grid import short_names

    return Table(
        name=m["name"],
        title=m.get("title") or m["name"],
        rows=rows,
        columns=short_names(keys, shown or {}),
        description=m.get("description") or "",
        pivot=m.get("pivot"),
        folds=m.get("folds"),
        fold_key=m.get("fold_key"),
        source=str(path),
    )


def _loose_table(runs: list[RunData]) -> Table:
    """Run folders given one by one: runs whose configs differ only by seed (and paths) form one point."""
    groups: dict[str, list[RunData]] = {}
    flat = {}
    for r in runs:
        ignored = _GROUP_IGNORED | run_reference_keys()
        f = {k: v for k, v in flat_dict(r.config).items() if k not in ignored}
        flat[id(r)] = f
        groups.setdefault(json.dumps(f, sort_keys=True, default=str), []).append(r)
    all_keys = sorted({k for f in flat.values() for k in f})
    varying = [
        k
        for k in all_keys
        if len({json.dumps(flat[id(g[0])].get(k), default=str) for g in groups.values()}) > 1 and len(groups) > 1
    ]
    rows = []
    for g in groups.values():
        names = sorted(
            {
                re.sub(r"[-_]?seed\d+$", "", (r.summary or {}).get("name") or r.config.get("name") or r.path.name)
                for r in g
            }
        )
        label = names[0] if len(names) == 1 else os.path.commonprefix(names).rstrip("-_/") or names[0]
        values = {k: flat[id(g[0])].get(k) for k in varying[:8]}
        rows.append(
            Row(
                stage="",
                point=re.sub(r"[^A-Za-z0-9._-]+", "-", label),
                label=label,
                values=values,
                runs=g,
                expected=len(g),
                seeds=sorted({int((r.summary or {}).get("seed", r.config.get("seed", 0))) for r in g}),
            )
        )
    labels = [r.label for r in rows]
    for r in rows:  # two points with one name: tell them apart by their values
        if labels.count(r.label) > 1:
            r.label += " (" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.values.items()) + ")"
    from .grid import short_names

    return Table(name="runs", title="Runs", rows=rows, columns=short_names(varying[:8], {}), source="run folders")


def collect(paths: list[str | os.PathLike]) -> list[Table]:
    """Tables of the given sweep folders, run folders, and folders holding run folders."""
    tables: list[Table] = []
    loose: list[RunData] = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            tables.append(_sweep_table(p))
        elif (p / "summary.json").is_file() or (p / "metrics.jsonl").is_file():
            loose.append(load_run_data(p))
        elif p.is_dir():
            found = sorted(q.parent for q in p.glob("*/summary.json"))
            if not found:
                raise FparError(f"{p} holds no run folders (no */summary.json) and is not a sweep folder")
            loose += [load_run_data(q) for q in found]
        else:
            raise FparError(f"{p} not found; give sweep folders (with sweep.json) or run folders (with summary.json)")
    if loose:
        tables.append(_loose_table([r for r in loose if r.finished] or loose))
    for t in tables:
        t.metrics = table_metrics(t.runs)
        for row in t.rows:
            row.metrics = t.metrics
            _row_stats(row)
        scored = [r for r in t.rows if _headline(r, t)[0] is not None]
        if scored:
            top = max(_headline(r, t)[0] for r in scored)
            for r in scored:  # ties: every row at the top is the best
                r.best = math.isclose(_headline(r, t)[0], top, rel_tol=0, abs_tol=1e-9)
    return tables


# --------------------------------------------------------------------------------------------------------------
# Protocol statement


def _headline_key(table: Table) -> str:
    """The accuracy that ranks rows: the test accuracy at the selected epoch when epochs were chosen on a
    validation split, else best_top1 (selected on the test subjects, as the report did)."""
    sel = {(r.summary or {}).get("select_on") for r in table.runs}
    return "test_top1" if sel == {"val"} else "best_top1"


def _headline(row: Row, table: Table) -> tuple[float | None, float | None, int]:
    return row.stats.get(_headline_key(table), (None, None, 0))


def selected_on(runs: list[RunData]) -> set[str]:
    """The splits that selected the epochs of the finished ``runs`` (``select_on`` of their summaries)."""
    return {r.summary.get("select_on") for r in runs if r.finished} - {None}


TEST_MARK = "selected on test"  # what marks numbers whose epoch the test set itself chose (optimistic)


def _row_mark(row: Row, table: Table) -> str:
    """`` (selected on test)`` for a row of test-selected runs in a table whose other rows were selected otherwise
    (a table selected on test throughout says it once, in its header and titles)."""
    mixed = len(selected_on(table.runs)) > 1
    return f" ({TEST_MARK})" if mixed and "test" in selected_on(row.runs) else ""


def _all_on_test(table: Table) -> bool:
    return selected_on(table.runs) == {"test"}


def protocol(table: Table) -> str:
    """Test-set size, test subjects and which split selected the epochs, in one sentence."""
    runs = [r for r in table.runs if r.finished]
    if not runs:
        return "No finished runs yet."
    videos = sorted({r.summary.get("test_videos") or r.summary.get("videos") for r in runs} - {None})
    subjects = sorted(
        {",".join(flat_dict(r.config).get(canonical_key("data.test_subjects")) or []) for r in runs} - {""}
    )
    sel = sorted({r.summary.get("select_on") for r in runs} - {None})
    if table.folds and fold_title("x", table.fold_key).startswith("test "):
        size = f"leave-one-subject-out over {', '.join(table.folds)} (each fold tests one subject; mean over folds)"
    elif table.folds:
        size = f"{len(table.folds)} folds over {table.fold_key} = {', '.join(table.folds)} (mean over folds)"
    else:
        v = "/".join(str(x) for x in videos) or "?"
        splits = sorted({r.summary.get("split") for r in runs} - {None, ""})  # the readers' words for their splits
        where = "; ".join(splits) if splits else f"subjects {'; '.join(subjects) or '?'}"  # summaries of fpar 0.1.0
        size = f"test set: {v} videos ({where})"
    how = []
    for s in sel:
        if s == "test":
            how.append("epochs selected on test: the best epoch on the test set itself, as the report did (optimistic)")
        elif s == "val":
            how.append(
                "epochs selected on val: a validation split held out of the training subjects; 'test top-1' is "
                "the test accuracy at that epoch"
            )
        else:
            how.append(f"epochs selected on {s}")
    return f"{size}; {'; '.join(how)}."


# --------------------------------------------------------------------------------------------------------------
# Tables


def _fmt(m: float | None, s: float | None = None) -> str:
    if m is None:
        return "-"
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}"


def _fmt_value(v: Any) -> str:
    from .grid import format_value

    if isinstance(v, str) and "/" in v:
        return Path(v).stem
    text = format_value(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _shown_metrics(table: Table) -> list[tuple[str, str]]:
    return [(k, t) for k, t in table.metrics if any(r.stats.get(k, (None,))[0] is not None for r in table.rows)] or [
        METRICS[0]
    ]


def table_rows(table: Table) -> list[dict[str, Any]]:
    """The rows of a table as flat dicts (the CSV lines)."""
    out = []
    head = _headline_key(table)
    for r in table.rows:
        d: dict[str, Any] = {"table": table.name, "stage": r.stage, "point": r.point, "label": r.label}
        for k in table.columns:
            d[k] = _fmt_value(r.values[k]) if k in r.values else ""
        d["n"] = r.n
        d["expected"] = r.expected // max(len(r.folds or [None]), 1)
        d["select_on"] = "/".join(sorted(selected_on(r.runs)))
        for k, _ in table.metrics:
            m, s, _n = r.stats.get(k, (None, None, 0))
            d[f"{k}_mean"] = None if m is None else round(m, 4)
            d[f"{k}_std"] = None if s is None else round(s, 4)
        for f, v in r.fold_means.items():
            d[f"fold_{f}_best_top1"] = None if v is None else round(v, 4)
        d["published"] = r.published
        m = r.stats.get(head, (None,))[0]
        d["delta"] = None if (m is None or r.published is None) else round(m - r.published, 4)
        d["best"] = r.best
        out.append(d)
    return out


def markdown_table(table: Table) -> str:
    metrics = _shown_metrics(table)
    has_pub = any(r.published is not None for r in table.rows)
    head = _headline_key(table)
    cols = ["row", *table.columns.values(), "n"]
    on_test = f", {TEST_MARK}" if _all_on_test(table) else ""
    cols += [f"{t} (mean ± std{on_test})" if k == head else t for k, t in metrics]
    if table.folds:
        cols += [fold_title(f, table.fold_key) for f in table.folds]
    if has_pub:
        cols += ["report", "ours - report"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.rows:
        n_exp = r.expected // max(len(r.folds or [None]), 1)
        cells = [
            r.label + _row_mark(r, table),
            *(_fmt_value(r.values[k]) if k in r.values else "" for k in table.columns),
        ]
        cells.append(str(r.n) if r.n == n_exp else f"{r.n}/{n_exp}")
        cells += [_fmt(*r.stats.get(k, (None, None, 0))[:2]) for k, _ in metrics]
        if table.folds:
            cells += [_fmt(r.fold_means.get(f)) for f in table.folds]
        if has_pub:
            m = r.stats.get(head, (None,))[0]
            cells.append(_fmt(r.published))
            cells.append("-" if m is None or r.published is None else f"{m - r.published:+.2f}")
        if r.best:
            cells = [f"**{c}**" if c not in ("", "-") else c for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def pivot_table(table: Table) -> str | None:
    """The report's layout for Figures 14-15: rows of (LR, WD, STEP), one column per GAMMA; cells: mean best
    top-1 (the report's number in brackets)."""
    pv = table.pivot
    if not pv:
        return None
    rk, ck = pv["rows"], pv["columns"]
    head = _headline_key(table)
    row_keys: list[tuple] = []
    col_vals: list[Any] = []
    cells: dict[tuple, Row] = {}
    for r in table.rows:
        if any(k not in r.values for k in [*rk, ck]):
            return None
        key = tuple(json.dumps(r.values[k]) for k in rk)
        cv = json.dumps(r.values[ck])
        if key not in row_keys:
            row_keys.append(key)
        if cv not in col_vals:
            col_vals.append(cv)
        cells[(key, cv)] = r
    names = table.columns
    cols = [names.get(k, k) for k in rk] + [f"{names.get(ck, ck)}={_fmt_value(json.loads(c))}" for c in col_vals]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key in row_keys:
        cells_txt = [_fmt_value(json.loads(v)) for v in key]
        for c in col_vals:
            r = cells.get((key, c))
            if r is None:
                cells_txt.append("")
                continue
            txt = _fmt(r.stats.get(head, (None,))[0])
            if r.published is not None:
                txt += f" ({r.published:.2f})"
            cells_txt.append(f"**{txt}**" if r.best else txt)
        lines.append("| " + " | ".join(cells_txt) + " |")
    return "\n".join(lines)


def pivot_note(table: Table) -> str:
    """What the cells of :func:`pivot_table` are."""
    head = dict(table.metrics).get(_headline_key(table), "best top-1")
    on_test = f", {TEST_MARK}" if _all_on_test(table) else ""
    return f"mean {head} over seeds{on_test}; the report's number in brackets"


def table_text(table: Table, *, heading: str = "##") -> str:
    parts = [f"{heading} {table.title}", ""]
    if table.description:
        parts += [table.description.strip(), ""]
    parts += [protocol(table), "", markdown_table(table)]
    pv = pivot_table(table)
    if pv:
        parts += ["", f"In the report's layout ({pivot_note(table)}):", "", pv]
    missing = sum(r.expected - len(r.runs) for r in table.rows)
    if missing:
        parts += ["", f"{missing} run(s) of this table have not finished (n counts the finished seeds)."]
    return "\n".join(parts)


def write_csv(tables: list[Table], path: Path) -> None:
    rows = [d for t in tables for d in table_rows(t)]
    keys: list[str] = []
    for d in rows:
        for k in d:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for d in rows:
        w.writerow({k: ("" if d.get(k) is None else d.get(k)) for k in keys})
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------------------
# The report


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def _figure_runs(row: Row, all_runs: bool) -> list[RunData]:
    if all_runs or len(row.runs) <= 1:
        return row.runs
    return [max(row.runs, key=lambda r: r.summary.get("best_top1", -1))]  # the point's best seed


REPORT_MARK = ".fpar-report"  # in every report folder: a later report may replace what an earlier one wrote there


def _claim_report_folder(out: Path) -> None:
    """``out`` as this report's folder: new, empty, or an earlier report's (its mark); anything else holds files
    someone else wrote, which a report must not overwrite (a one-line error, nothing written)."""
    refuse_file(out, "--out", "the report")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARK).is_file():
        raise FparError(
            f"--out {out} holds files that are not an fpar report; nothing was written: give another --out (a new "
            "folder) or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)  # (a folder that cannot be written: the CLI's one line for OSError)
    (out / REPORT_MARK).write_text("written by fpar report; a later report may replace this folder's files\n")


def make_report(
    paths: list[str | os.PathLike], out_dir: str | os.PathLike, *, all_runs: bool = False, title: str | None = None
) -> dict[str, Any]:
    """Tables, figures and ``index.html`` for sweep and run folders.

    Args:
        paths: sweep folders (with ``sweep.json``), run folders (with ``summary.json``) or folders of run folders.
        out_dir: where ``table.md``, ``table.csv``, ``figures/`` and ``index.html`` go.
        all_runs: per-run figures for every run (default: for the best seed of each point).
    Returns:
        ``{"tables": [Table], "markdown": str, "files": [paths written]}``.
    """
    from . import figures

    if not paths:
        raise FparError("give at least one sweep or run folder to report on")
    tables = collect(paths)
    out = Path(out_dir)
    _claim_report_folder(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join(table_text(t) for t in tables) + "\n"
    files = [atomic_write_text(out / "table.md", f"# {title or 'Results'}\n\n" + md)]
    write_csv(tables, out / "table.csv")
    files.append(out / "table.csv")
    sections = []
    for t in tables:
        figs: list[tuple[str, Path]] = []
        series = {r.label + _row_mark(r, t): [run.history for run in r.runs] for r in t.rows if r.runs}
        tag = _slug(t.name)
        on_test = f" ({TEST_MARK})" if _all_on_test(t) else ""
        if any(h for hs in series.values() for h in hs):
            for key, what in (("val_top1", "validation accuracy (%)"), ("val_loss", "validation loss")):
                p = figures.epoch_curves(
                    series, key, fig_dir / f"{tag}_{key}.png", ylabel=what, title=t.title + on_test
                )
                if p:
                    figs.append((f"{what} per epoch{on_test}", p))
        head = _headline_key(t)
        what = dict(t.metrics).get(head, head)
        if len(t.runs) > 1:
            points = [
                (r.label + _row_mark(r, t), [(run.summary or {}).get(head) for run in r.runs], r.published)
                for r in t.rows
            ]
            optimistic = f", epochs {TEST_MARK} (optimistic)" if on_test else ""
            p = figures.point_summary(
                points,
                fig_dir / f"{tag}_points.png",
                xlabel=f"{what} (%){optimistic}",
                title=f"{t.title}{on_test}: {what}",
            )
            if p:
                figs.append((f"{what} of every run, per point{on_test}", p))
        run_figs: list[tuple[str, Path]] = []
        for row in t.rows:
            for run in _figure_runs(row, all_runs):
                name = f"{tag}_{_slug(run.name)}"
                sel = (run.summary or {}).get("select_on")
                cap = f"{row.label}: {run.name}" + (f" ({TEST_MARK})" if sel == "test" else "")
                p = figures.run_curves(
                    run.history,
                    fig_dir / f"{name}_curves.png",
                    title=cap,
                    select_on=sel,
                    best_epoch=(run.summary or {}).get("best_epoch"),
                )
                if p:
                    run_figs.append((f"{cap}: accuracy and loss, LR phases", p))
                p = figures.aux_loss_curves(run.history, fig_dir / f"{name}_ms_loss.png", title=cap)
                if p:
                    run_figs.append((f"{cap}: motion-segmentation loss", p))
                if (run.path / "confusion.csv").is_file():
                    try:
                        p = figures.confusion_figure(run.path / "confusion.csv", fig_dir / f"{name}_confusion.png", cap)
                    except FparError as e:  # one damaged file costs its figure, not the whole report
                        logger.warning("skipped a confusion figure: %s", e)
                        p = None
                    if p:
                        run_figs.append((f"{cap}: confusion matrix of the best epoch", p))
        files += [p for _, p in figs + run_figs]
        sections.append((t, figs, run_figs))
    files.append(_write_html(out / "index.html", sections, title or "Results"))
    return {"tables": tables, "markdown": md, "files": [str(f) for f in files], "out": str(out)}


def mmap_downsampling_figure(mmap_png_or_array: str | os.PathLike | Any, out_png: str | os.PathLike, **kw) -> Path:
    """Figure 20: a 224 crop of a motion map and its 7/14/28 plain and grid downsamplings
    (see :func:`fpar.experiments.figures.mmap_downsampling_figure`)."""
    from .figures import mmap_downsampling_figure as draw

    return draw(mmap_png_or_array, out_png, **kw)


def _md_to_html_table(md: str) -> str:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return ""
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    head, body = split[0], split[2:]

    def cell(c: str, tag: str) -> str:
        bold = c.startswith("**") and c.endswith("**") and len(c) > 4
        text = html.escape(c[2:-2] if bold else c).replace("\\|", "|")
        return f"<{tag}>{'<b>' + text + '</b>' if bold else text}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell(c, "th") for c in head) + "</tr>"]
    out += ["<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in body]
    out.append("</table>")
    return "\n".join(out)


def _write_html(path: Path, sections, title: str) -> Path:
    base = path.parent
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
        "td:first-child{text-align:left}figure{display:inline-block;margin:0.5em;vertical-align:top}"
        "img{max-width:640px}figcaption{font-size:small;max-width:640px}.note{color:#444}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="note">Files: <a href="table.md">table.md</a>, <a href="table.csv">table.csv</a>.</p>',
    ]
    for t, figs, run_figs in sections:
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        if t.description:
            parts.append(f'<p class="note">{html.escape(t.description)}</p>')
        parts.append(f'<p class="note">{html.escape(protocol(t))}</p>')
        parts.append(_md_to_html_table(markdown_table(t)))
        pv = pivot_table(t)
        if pv:
            parts.append(f'<p class="note">In the report\'s layout ({html.escape(pivot_note(t))}):</p>')
            parts.append(_md_to_html_table(pv))
        for cap, p in [*figs, *run_figs]:
            rel = os.path.relpath(p, base).replace(os.sep, "/")
            parts.append(
                f'<figure><img src="{html.escape(rel)}" alt="{html.escape(cap)}">'
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts) + "\n")
