"""Grid files: a base recipe, the points to run, the seeds, and stages that chain runs (stage 1 -> stage 2 -> ...).

A grid file (``configs/paper/fig21.yaml``) is YAML::

    name: fig14                        # sweep name (default: the file name); the sweep folder is sweeps/<name>
    title: "Figure 14: ..."            # optional, printed above the table
    base: ../ego_rnn_ms_stage2.yaml    # recipe, relative to the grid file
    overrides: [data.frames=16, train.epochs=100]   # for every trial (a list of key=value or a mapping)
    grid:                              # product of these values ...
      optim.lr: [1.0e-4, 5.0e-4]
      sched.milestones: [[30, 70], [40, 80]]
    points:                            # ... times these explicit points (either may be left out)
      - {id: a, label: "row A", model.ego_rnn.ms.task: reg, published: 61.2}
    seeds: [0, 1, 2]
    folds: loso                        # optional: leave-one-subject-out, one trial per test subject
    columns: {optim.lr: LR}            # optional: the keys the table shows, with display names (also labels)
    published: {"row A": 61.21}        # optional: the report's numbers by point label or id
    pivot: {rows: [optim.lr], columns: sched.gamma}   # optional second table in the report's layout

``folds:`` runs every (point, seed) once per fold, and the report shows the mean over the folds (per seed, then
over seeds) and a column per fold. ``folds: loso`` (or ``folds: {loso: [S1, S2, S3, S4]}``) is
leave-one-subject-out: one trial per test subject, with ``data.test_subjects: [S]`` and ``data.train_subjects``
the other subjects (trial names end in ``-testS2``). ``folds: {key: data.split, values: [1, 2, 3]}`` is one trial
per value with the override ``data.split=<value>`` (names end in ``-split1``: the key's last dotted part and the
value); give at least two values.

Tables that need earlier runs list ``stages:`` instead; each stage has the keys above (``base``, ``overrides``,
``grid``, ``points``, ``seeds``, ``report: false`` to keep it out of the table) and a ``name``. A value
``${stage:NAME}`` is the run folder of the matching trial of the earlier stage NAME: the same seed (or its only
seed, for a stage run once overall: ``seeds: [0]``), the same fold, and the point with the same ``id`` or else the
only point whose values agree on every key both points set. ``${stage:NAME/ID}`` names the point. For example
``init.from: ${stage:s1}`` starts each stage-2 trial from its stage-1 run, and
``model.two_stream.rgb_run: ${stage:rgb_s2/cam_7f}`` picks one run for a two-stream model.

A point may also carry ``base:`` (another recipe for that row), ``id`` (stable folder name; default: built from
its values), ``label`` (the table's row name) and ``published`` (the report's number for that row).

:func:`expand` turns a grid into :class:`Trial` objects: one per (stage, point, seed[, fold]) with a stable name,
the recipe and the typed overrides, checked against the config schema.
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    NAME,
    ExperimentConfig,
    alias_keys,
    canonical_key,
    get,
    load_config,
    parse_override,
    read_yaml_mapping,
    set_value,
    valid_keys,
    validate,
)
from ..errors import FparError

RESERVED = ("id", "label", "base", "published")
STAGE_KEYS = ("name", "base", "overrides", "grid", "points", "seeds", "report", "published")
TOP_KEYS = (*STAGE_KEYS, "title", "columns", "stages", "folds", "pivot", "description")
DEFAULT_SUBJECTS = ("S1", "S2", "S3", "S4")
_REF = re.compile(r"^\$\{stage:([A-Za-z0-9_.-]+)(?:/([A-Za-z0-9_.,=+-]+))?\}$")


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Ref:
    """A value that becomes the run folder of trial ``trial`` once that trial has finished."""

    trial: str


@dataclass(frozen=True)
class Fold:
    """One fold of a cross-validation: its label (``S2``, ``1``), the overrides that make it, and the suffix of
    its trial names (``testS2``, ``split1``)."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    suffix: str


@dataclass
class Point:
    stage: str
    id: str
    label: str
    base: Path
    values: dict[str, Any]  # the point's own settings (grid product + explicit point), refs as strings
    published: float | None = None
    report: bool = True
    auto_label: bool = False


@dataclass
class Stage:
    name: str
    base: Path | None
    overrides: list[tuple[str, Any]]
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]
    seeds: list[int] | None
    report: bool
    published: dict[str, float]


@dataclass
class Grid:
    path: Path
    name: str
    title: str
    stages: list[Stage]
    seeds: list[int]
    overrides: list[tuple[str, Any]]
    published: dict[str, float]
    columns: dict[str, str] | None  # display names of config keys; None: every varying key, last dotted part
    folds: list[Fold] | None = None
    fold_key: str | None = None  # what tells the folds apart: data.test_subjects (loso) or the key of folds: {key: ...}
    pivot: dict[str, Any] | None = None
    description: str = ""
    multi_stage: bool = False

    @property
    def fold_labels(self) -> list[str] | None:
        return None if self.folds is None else [f.label for f in self.folds]


@dataclass
class Trial:
    """One training run of a sweep.

    ``name`` is stable: it depends on the stage, the point id, the seed and the fold only, so adding points to a
    grid never renames the runs already made. ``overrides`` are applied in order on top of ``base``; values that
    are :class:`Ref` become the referenced trial's run folder (see :func:`resolve_overrides`).
    """

    name: str
    stage: str
    point: str
    label: str
    seed: int
    fold: str | None
    base: str
    overrides: list[tuple[str, Any]]
    deps: list[str] = field(default_factory=list)
    report: bool = True
    published: float | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "point": self.point,
            "label": self.label,
            "seed": self.seed,
            "fold": self.fold,
            "base": self.base,
            "deps": list(self.deps),
            "report": self.report,
            "published": self.published,
            "values": {k: _jsonable(v) for k, v in self.values.items()},
        }


# --------------------------------------------------------------------------------------------------------------
# Formatting of values (labels, ids)


def format_value(v: Any) -> str:
    """A value as the report writes it: 1e-04, 0.1, [30, 70], true."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            s = f"{v:.0e}"
            return s if float(s) == v else f"{v:.3e}"
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if v is None:
        return "none"
    return str(v)


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return s or "x"


def _id_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_id_value(x) for x in v)
    if isinstance(v, str) and ("/" in v or "\\" in v):
        return Path(v).stem
    return format_value(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Ref):
        return f"${{trial:{v.trial}}}"
    if isinstance(v, tuple):
        return list(v)
    return v


def short_names(keys: list[str], columns: dict[str, str]) -> dict[str, str]:
    """Display names: ``columns`` first, else the last dotted part (the full key where two would clash)."""
    last = [k.split(".")[-1] for k in keys]
    out = {}
    for k, s in zip(keys, last):
        out[k] = columns.get(k) or (s if last.count(s) == 1 else k)
    return out


# --------------------------------------------------------------------------------------------------------------
# Loading


def _read(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "grid file", "configs/paper/fig21.yaml")


def _unknown(key: str, choices: tuple[str, ...] | list[str], where: str) -> FparError:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; use one of {', '.join(choices)}"
    return FparError(f"unknown key '{key}' in {where}{hint}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys (``{model: {ego_rnn: {cam: false}}}`` -> ``model.ego_rnn.cam``), in their
    current spellings; leaves stay as they are."""
    leaves = set(valid_keys())
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in leaves and key not in RESERVED:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_key(key: str, where: str) -> None:
    """A key of the config in either spelling (``model.ego_rnn.ms.task`` or fpar 0.1.0's ``model.ms.task``); an
    error names it as written and suggests the closest key in either spelling."""
    if not isinstance(key, str):
        raise FparError(f"{where}: {key!r} is not a config key; give dotted keys such as optim.lr")
    keys = valid_keys()
    if canonical_key(key) in keys or key in ("seed", "name"):
        return
    close = difflib.get_close_matches(key, keys + alias_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `fpar config --keys` to list them"
    raise FparError(f"unknown config key '{key}' in {where}{hint}")


def _overrides(raw: Any, where: str) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        items = list(_flatten(raw).items())
    elif isinstance(raw, list):
        items = []
        for text in raw:
            if not isinstance(text, str):
                raise FparError(f"{where}: overrides must be key=value strings or a mapping, got {text!r}")
            items.append(parse_override(text))
    else:
        raise FparError(f"{where}: overrides must be a list of key=value strings or a mapping")
    for k, _ in items:
        _check_key(k, where)
        _not_seed(k, f"{where} (overrides)")
    return items


def _not_seed(key: str, where: str) -> None:
    """A trial's seed comes from ``seeds:`` and would replace a ``seed`` set anywhere else (every trial seed 0)."""
    if key == "seed":
        raise FparError(f"{where}: seed is set per trial by seeds: (e.g. seeds: [0, 1, 2]); remove it from here")


def _seeds(raw: Any, where: str) -> list[int] | None:
    if raw is None:
        return None
    raw = raw if isinstance(raw, list) else [raw]
    if not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise FparError(f"{where}: seeds must be a list of integers, e.g. [0, 1, 2]")
    if len(set(raw)) != len(raw):
        raise FparError(f"{where}: seeds {raw} repeat a seed")
    return list(raw)


def _number(value: Any, where: str) -> float:
    """A published number (a percentage), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FparError(f"{where}: published numbers must be numbers (top-1 in %), got {value!r}")
    return float(value)


def _published(raw: Any, where: str) -> dict[str, float]:
    published = raw or {}
    if not isinstance(published, dict):
        raise FparError(f"{where}: published must map point labels or ids to numbers")
    return {str(k): _number(v, f"{where}, published '{k}'") for k, v in published.items()}


def _recipe(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FparError(f"{where}: base is {value!r}; give a recipe file, e.g. base: ../configs/ego_rnn_stage1.yaml")
    return value


def _stage(raw: dict[str, Any], path: Path, default_name: str) -> Stage:
    if not isinstance(raw, dict):
        raise FparError(f"grid file {path}: each of stages is a mapping (name:, base:, grid: ...), got {raw!r}")
    name = str(raw.get("name", default_name))
    where = f"grid file {path} (stage '{name}')"
    for k in raw:
        if k not in STAGE_KEYS:
            raise _unknown(k, STAGE_KEYS, where)
    if not NAME.fullmatch(name):
        raise FparError(f"{where}: a stage name may hold letters, digits, '_', '-' and '.' only")
    base = (path.parent / _recipe(raw["base"], where)).resolve() if raw.get("base") else None
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise FparError(f"{where}: grid must map keys to lists of values")
    grid = _flatten(grid)
    for k, vals in grid.items():
        _check_key(k, where)
        _not_seed(k, f"{where} (grid)")
        if not isinstance(vals, list) or not vals:
            raise FparError(f"{where}: grid values of '{k}' must be a non-empty list, e.g. {k}: [a, b]")
        default = get(ExperimentConfig(), k) if k not in ("seed", "name") else None
        if isinstance(default, list) and not all(isinstance(v, list) for v in vals):
            raise FparError(f"{where}: grid values of '{k}' must be a list of lists, e.g. {k}: [[30, 70], [40, 80]]")
    points = raw.get("points") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise FparError(f"{where}: points must be a list of mappings")
    points = [_flatten(p) for p in points]
    for i, p in enumerate(points):
        for k in p:
            if k not in RESERVED:
                _check_key(k, f"{where}, point {i + 1}")
                _not_seed(k, f"{where}, point {i + 1}")
    published = _published(raw.get("published"), where)
    report = raw.get("report", True)
    if not isinstance(report, bool):
        raise FparError(f"{where}: report must be true or false")
    return Stage(
        name=name,
        base=base,
        overrides=_overrides(raw.get("overrides"), where),
        grid=grid,
        points=points,
        seeds=_seeds(raw.get("seeds"), where),
        report=report,
        published=published,
    )


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (keys against the config schema, stages, seeds)."""
    path = Path(path).resolve()
    raw = _read(path)
    where = f"grid file {path}"
    for k in raw:
        if k not in TOP_KEYS:
            raise _unknown(k, TOP_KEYS, where)
    name = str(raw.get("name") or path.stem)
    if not NAME.fullmatch(name):
        raise FparError(f"{where}: name may hold letters, digits, '_', '-' and '.' only")
    if "stages" in raw:
        stray = [k for k in ("base", "grid", "points") if k in raw]
        if stray:
            raise FparError(f"{where}: with stages, put {', '.join(stray)} inside each stage")
        if not isinstance(raw["stages"], list) or not raw["stages"]:
            raise FparError(f"{where}: stages must be a non-empty list")
        stages = [_stage(s, path, f"stage{i + 1}") for i, s in enumerate(raw["stages"])]
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise FparError(f"{where}: stage names repeat ({', '.join(names)})")
        multi = True
    else:
        stages = [_stage({k: v for k, v in raw.items() if k in ("base", "grid", "points")}, path, "main")]
        multi = False
    seeds = _seeds(raw.get("seeds"), where) or [0]
    folds, fold_key = _folds(raw.get("folds"), where)
    published = _published(raw.get("published"), where)
    columns = raw.get("columns")  # None: show every varying key; a mapping (even empty): show those keys only
    if columns is not None and not isinstance(columns, dict):
        raise FparError(f"{where}: columns must map config keys to display names")
    for k in columns or {}:
        _check_key(k, f"{where} (columns)")
    pivot = raw.get("pivot")
    if pivot is not None:
        if not isinstance(pivot, dict) or set(pivot) != {"rows", "columns"}:
            raise FparError(f"{where}: pivot must be {{rows: [keys], columns: key}}")
        rows = pivot["rows"] if isinstance(pivot["rows"], list) else [pivot["rows"]]
        if not isinstance(pivot["columns"], str):
            raise FparError(f"{where}: pivot's columns is one config key, e.g. columns: optim.lr")
        for k in [*rows, pivot["columns"]]:
            _check_key(k, f"{where} (pivot)")
        pivot = {"rows": rows, "columns": pivot["columns"]}
    return Grid(
        path=path,
        name=name,
        title=str(raw.get("title") or name),
        stages=stages,
        seeds=seeds,
        overrides=_overrides(raw.get("overrides"), where),
        published=published,
        columns=None if columns is None else {str(k): str(v) for k, v in columns.items()},
        folds=folds,
        fold_key=fold_key,
        pivot=pivot,
        description=str(raw.get("description") or ""),
        multi_stage=multi,
    )


_FOLD_FORMS = "'loso', {loso: [S1, S2, S3, S4]} or {key: data.split, values: [1, 2, 3]}"


def _folds(raw: Any, where: str) -> tuple[list[Fold] | None, str | None]:
    """``folds:`` as folds and the key that tells them apart (None, None when the grid has no folds)."""
    if raw is None:
        return None, None
    bad = FparError(f"{where}: folds must be {_FOLD_FORMS}; got {raw!r}")
    if raw == "loso" or (isinstance(raw, dict) and list(raw) == ["loso"]):
        subjects = list(DEFAULT_SUBJECTS) if raw == "loso" else raw["loso"]
        if not isinstance(subjects, list):
            raise bad
        subjects = [str(x) for x in subjects]
        if len(subjects) < 2:
            raise FparError(f"{where}: leave-one-subject-out needs at least two subjects")
        if len(set(subjects)) != len(subjects):
            raise FparError(f"{where}: folds: {{loso: {subjects}}} repeats a subject")
        folds = [
            Fold(
                label=s,
                overrides=(("data.train_subjects", [x for x in subjects if x != s]), ("data.test_subjects", [s])),
                suffix=f"test{s}",
            )
            for s in subjects
        ]
        return folds, "data.test_subjects"
    if not isinstance(raw, dict) or set(raw) != {"key", "values"} or not isinstance(raw["key"], str):
        raise bad
    key, values = raw["key"], raw["values"]
    if not isinstance(values, list) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values
    ):
        raise FparError(
            f"{where}: folds: {{key: {key}, values: ...}} needs a list of numbers or strings; got {values!r}"
        )
    if key in ("seed", "name"):
        raise FparError(f"{where}: folds cannot vary '{key}'; use seeds: for seeds")
    _check_key(key, f"{where} (folds)")
    if len(values) < 2:
        raise FparError(f"{where}: folds: {{key: {key}, values: ...}} needs at least two values; got {values!r}")
    labels = [format_value(v) for v in values]
    if len(set(labels)) != len(labels):
        raise FparError(f"{where}: folds: {{key: {key}, values: {values!r}}} repeats a value")
    last = key.split(".")[-1]
    folds = [
        Fold(label=lab, overrides=((key, v),), suffix=_slug(f"{last}{_id_value(v)}")) for lab, v in zip(labels, values)
    ]
    suffixes = [f.suffix for f in folds]
    if len(set(suffixes)) != len(suffixes):
        raise FparError(f"{where}: folds: {{key: {key}, values: {values!r}}} give two folds one trial name")
    return folds, key


# --------------------------------------------------------------------------------------------------------------
# Expansion


def stage_points(grid: Grid, stage: Stage) -> list[Point]:
    """The points of one stage: the product of ``grid`` times the explicit ``points`` (either may be empty)."""
    where = f"grid file {grid.path} (stage '{stage.name}')" if grid.multi_stage else f"grid file {grid.path}"
    keys = list(stage.grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(stage.grid[k] for k in keys))] or [{}]
    explicit = stage.points or [{}]
    varying: list[str] = []
    for p in stage.points:
        for k in p:
            if k not in RESERVED and k not in varying:
                varying.append(k)
        both = sorted(set(p) & set(keys))
        if both:
            raise FparError(f"{where}: {', '.join(both)} is set both in grid and in a point; keep one")
    varying += keys
    names = short_names(varying, grid.columns or {})
    points: list[Point] = []
    for p in explicit:
        for combo in combos:
            values = {**{k: v for k, v in p.items() if k not in RESERVED}, **combo}
            shown = {k: v for k, v in values.items() if not _is_ref(v)}
            pid = str(p["id"]) if "id" in p else _auto_id(shown, names)
            if "id" in p and combo:
                pid = f"{pid}_{_auto_id(combo, names)}"
            label = str(p["label"]) if "label" in p else None
            auto = label is None
            if label is None:
                label = " ".join(f"{names[k]}={format_value(v)}" for k, v in shown.items()) or stage.name
            elif combo:
                label = f"{label} " + " ".join(f"{names[k]}={format_value(v)}" for k, v in combo.items())
            base = (grid.path.parent / _recipe(p["base"], where)).resolve() if p.get("base") else stage.base
            if base is None:
                raise FparError(f"{where}: no base recipe; give base: RECIPE.yaml (relative to the grid file)")
            if not Path(base).is_file():
                raise FparError(f"{where}: base recipe {base} not found")
            pub = p.get("published")
            points.append(
                Point(
                    stage=stage.name,
                    id=_slug(pid),
                    label=label,
                    base=Path(base),
                    values=values,
                    published=_number(pub, where) if pub is not None and not combo else None,
                    report=stage.report,
                    auto_label=auto,
                )
            )
    ids = [p.id for p in points]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise FparError(f"{where}: points repeat the id(s) {', '.join(dup)}; give each point its own id")
    return points


def _is_ref(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("${stage:")


def _auto_id(values: dict[str, Any], names: dict[str, str]) -> str:
    if not values:
        return "base"
    return "_".join(f"{names.get(k, k.split('.')[-1])}{_id_value(v)}" for k, v in values.items())


def expand(
    grid: Grid | str | Path,
    *,
    extra_overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    check: bool = True,
) -> list[Trial]:
    """All trials of a grid, stage by stage, in the file's order.

    Args:
        grid: a loaded grid or the path of a grid file.
        extra_overrides: ``key=value`` applied to every trial after the grid's own values (command line).
        seeds: replaces the grid's top-level ``seeds`` (stages with their own ``seeds`` keep them).
        check: build every trial's config once, so that a bad key or value fails here, naming the grid file.
    """
    g = grid if isinstance(grid, Grid) else load_grid(grid)
    extra = _overrides(list(extra_overrides), "the command line")
    top_seeds = list(seeds) if seeds is not None else g.seeds
    folds: list[Fold | None] = list(g.folds or [None])
    trials: list[Trial] = []
    by_stage: dict[str, list[Trial]] = {}
    points_of: dict[str, list[Point]] = {}
    all_labels: dict[str, Point] = {}
    for stage in g.stages:
        points_of[stage.name] = stage_points(g, stage)
    if g.folds and g.fold_key != "data.test_subjects":
        fk = canonical_key(g.fold_key)
        clash = sorted({k for pts in points_of.values() for p in pts for k in p.values if canonical_key(k) == fk})
        if clash:
            raise FparError(f"grid file {g.path}: {clash[0]} is both the folds key and set by a point; keep one")
    reported = [p for pts in points_of.values() for p in pts if p.report]
    labels = [p.label for p in reported]
    for p in reported:  # the same automatic label in two stages: say which stage
        if labels.count(p.label) > 1 and p.auto_label:
            p.label = f"{p.stage}: {p.label}"
    labels = [p.label for p in reported]
    for p in reported:  # still the same (values that are stage references do not show): add the id
        if labels.count(p.label) > 1 and p.auto_label:
            p.label = f"{p.label} ({p.id})"
    for p in reported:
        if p.label in all_labels:
            raise FparError(f"grid file {g.path}: two reported points share the label '{p.label}'; give one a label:")
        all_labels[p.label] = p
    for stage in g.stages:
        points = points_of[stage.name]
        stage_seeds = stage.seeds or top_seeds
        for p in points:
            for seed in stage_seeds:
                for f in folds:
                    fold = None if f is None else f.label
                    name = _trial_name(g, stage.name, p.id, seed, f)
                    ov: list[tuple[str, Any]] = [*g.overrides, *stage.overrides, *p.values.items()]
                    if f is not None:
                        ov += [(k, copy.deepcopy(v)) for k, v in f.overrides]
                    ov += extra
                    ov += [("seed", seed), ("name", f"{g.name}/{name}")]
                    deps: list[str] = []
                    resolved = []
                    for k, v in ov:
                        if _is_ref(v):
                            target = _resolve_ref(g, v, p, seed, fold, by_stage, points_of, f"{k} of point '{p.id}'")
                            deps.append(target)
                            v = Ref(target)
                        resolved.append((k, v))
                    t = Trial(
                        name=name,
                        stage=stage.name,
                        point=p.id,
                        label=p.label,
                        seed=seed,
                        fold=fold,
                        base=str(p.base),
                        overrides=resolved,
                        deps=sorted(set(deps)),
                        report=p.report,
                        published=p.published,
                        values={k: v for k, v in p.values.items() if not _is_ref(v)},
                    )
                    trials.append(t)
                    by_stage.setdefault(stage.name, []).append(t)
    _attach_published(g, trials, all_labels)
    touched = {k for k, _ in extra}
    varied = {k for pts in points_of.values() for p in pts for k in p.values}
    clash = sorted(touched & varied)
    if clash:
        import logging

        logging.getLogger(__name__).warning(
            "command-line override(s) %s replace values the grid varies: its points may become identical",
            ", ".join(clash),
        )
    if check:
        for t in trials:
            trial_config(t, {d: "/nonexistent/run" for d in t.deps}, source=f"grid file {g.path}")
    return trials


def _trial_name(g: Grid, stage: str, point: str, seed: int, fold: Fold | None) -> str:
    name = f"{point}-seed{seed}"
    if fold is not None:
        name += f"-{fold.suffix}"
    return f"{stage}--{name}" if g.multi_stage else name


def _resolve_ref(g, text, point, seed, fold, by_stage, points_of, what) -> str:
    m = _REF.match(text)
    where = f"grid file {g.path}, {what}"
    if not m:
        raise FparError(f"{where}: '{text}' is not a stage reference; write ${{stage:NAME}} or ${{stage:NAME/ID}}")
    stage, pid = m.group(1), m.group(2)
    if stage not in by_stage:
        earlier = [s for s in by_stage]
        raise FparError(
            f"{where}: ${{stage:{stage}}} names no earlier stage"
            + (f"; earlier stages: {', '.join(earlier)}" if earlier else "; put the stage it needs first")
        )
    candidates = points_of[stage]
    if pid is not None:
        chosen = [p for p in candidates if p.id == pid]
        if not chosen:
            raise FparError(f"{where}: stage '{stage}' has no point '{pid}'; its points: {_ids(candidates)}")
    else:
        chosen = [p for p in candidates if p.id == point.id]
        if not chosen:
            mine = {k: v for k, v in point.values.items() if not _is_ref(v)}
            chosen = [
                p for p in candidates if all(mine[k] == v for k, v in p.values.items() if k in mine and not _is_ref(v))
            ]
        if len(chosen) != 1:
            how = "matches none" if not chosen else f"matches {_ids(chosen)}"
            raise FparError(
                f"{where}: ${{stage:{stage}}} {how} of stage '{stage}'; write ${{stage:{stage}/ID}} with one of "
                f"{_ids(candidates)}"
            )
    target = chosen[0]
    runs = [t for t in by_stage[stage] if t.point == target.id and t.fold == fold]
    same = [t for t in runs if t.seed == seed]
    if same:
        return same[0].name
    seeds = sorted({t.seed for t in runs})
    if len(seeds) == 1:
        return runs[0].name
    raise FparError(
        f"{where}: stage '{stage}' has no run with seed {seed} (its seeds: {seeds}); run it once overall "
        "(seeds: [0]) or with the same seeds"
    )


def _ids(points: list[Point]) -> str:
    return ", ".join(p.id for p in points)


def _attach_published(g: Grid, trials: list[Trial], labels: dict[str, Point]) -> None:
    table: dict[str, float] = dict(g.published)
    for s in g.stages:
        table.update(s.published)
    if not table:
        return
    by_id = {}
    for p in labels.values():
        by_id.setdefault(p.id, []).append(p)
    for key, value in table.items():
        if key in labels:
            labels[key].published = value
        elif key in by_id and len(by_id[key]) == 1:
            by_id[key][0].published = value
        else:
            close = difflib.get_close_matches(key, list(labels), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise FparError(f"grid file {g.path}: published names '{key}', which is no point label or id{hint}")
    published = {(p.stage, p.id): p.published for p in labels.values()}
    for t in trials:
        if (t.stage, t.point) in published:
            t.published = published[(t.stage, t.point)]


# --------------------------------------------------------------------------------------------------------------
# Configs


@functools.lru_cache(maxsize=64)
def _base_config(path: str, mtime_ns: int) -> ExperimentConfig:
    return load_config(path)


def resolve_overrides(trial: Trial, runs: dict[str, str]) -> list[tuple[str, Any]]:
    """The trial's overrides with every :class:`Ref` replaced by the run folder in ``runs`` (trial name -> path)."""
    out = []
    for k, v in trial.overrides:
        if isinstance(v, Ref):
            if v.trial not in runs:
                raise FparError(f"trial {trial.name} needs the run of trial {v.trial}, which is not available")
            v = str(runs[v.trial])
        out.append((k, v))
    return out


def trial_config(
    trial: Trial, runs: dict[str, str], *, out: str | Path | None = None, source: str | None = None
) -> ExperimentConfig:
    """The trial's config: its recipe, then its overrides (refs resolved with ``runs``), then ``out``."""
    base = Path(trial.base)
    if not base.is_file():
        raise FparError(f"recipe {base} of trial {trial.name} not found")
    cfg = copy.deepcopy(_base_config(str(base), base.stat().st_mtime_ns))
    src = source or f"trial {trial.name}"
    for k, v in resolve_overrides(trial, runs):
        set_value(cfg, k, v, src)
    if out is not None:
        cfg.out = str(out)
    try:
        validate(cfg)
    except FparError as e:
        raise FparError(f"{src}, point '{trial.point}' ({trial.label}): {e}") from None
    return cfg
