"""`fpar reproduce FIGURE --data ROOT`: run one table of the report and print it beside the report's numbers.

Each table is a grid file in ``configs/paper/`` (``fig07`` ... ``fig25``, ``loso``); stages run in order (stage 1
before the stage-2 rows that start from it). ``quick=True`` shrinks every run to seconds on a CPU (64-pixel input,
resnet18 without pretrained weights, a 32-channel ConvLSTM, 4 frames, 2 epochs, one seed) but still runs every
point of the table: it checks the pipeline, not the accuracies. ``fig20`` draws the motion-map downsampling
picture from one of the dataset's motion maps.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from ..errors import FparError

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"

QUICK_OVERRIDES = (
    "data.input_size=64",
    "data.scale_size=64",
    "data.frames=4",
    "model.backbone=resnet18",
    "model.ego_rnn.mem_size=32",
    "train.epochs=2",
    "train.batch_size=8",
    "train.eval_batch_size=16",
)


def available() -> list[str]:
    return sorted(p.stem for p in PAPER.glob("*.yaml"))


def figure_name(figure: str) -> str:
    """``fig21``, ``21``, ``Figure 21``, ``7`` -> the grid's name (``fig21``, ``fig07``); ``loso``; ``fig20``."""
    f = str(figure).strip().lower().replace("figure", "fig").replace(" ", "")
    m = re.fullmatch(r"(?:fig)?0*(\d+)", f)
    if m:
        f = f"fig{int(m.group(1)):02d}"
    if f == "fig20" or f in available():
        return f
    raise FparError(f"no reproduction for '{figure}'; choose one of {', '.join([*available(), 'fig20'])}")


def grid_path(figure: str) -> Path:
    return PAPER / f"{figure_name(figure)}.yaml"


def quick_overrides(pretrained: str | None = None) -> list[str]:
    return [*QUICK_OVERRIDES, f"model.pretrained={pretrained or 'none'}", "train.progress=false"]


def reproduce(
    figure: str,
    data_root: str | os.PathLike,
    *,
    quick: bool = False,
    workers: int = 1,
    out: str | os.PathLike | None = None,
    storage: str | None = None,
    pretrained: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run a table of the report on ``data_root`` and report it beside the published numbers.

    Args:
        figure: ``fig07``, ``12``, ``fig21``, ``loso``, ... (see :func:`available`); ``fig20`` draws Figure 20.
        data_root: the dataset (GTEA61 layout).
        quick: tiny runs (see the module docstring); one seed unless ``seeds`` says otherwise.
        workers: trials trained at the same time (processes).
        out: the sweep folder (default ``sweeps/<figure>`` or ``sweeps/<figure>-quick``); the report goes to
            ``<out>/report``.
        pretrained: with ``quick``, a backbone file (`fpar pretrain`) to use instead of no pretrained weights.
        overrides: more ``key=value`` for every run (after the quick ones).
        seeds: replaces the table's seeds.
    Returns:
        ``{"figure", "sweep", "status", "report", "table"}`` where ``table`` is the Markdown printed.
    """
    from .report import make_report, table_text
    from .sweep import run_sweep

    name = figure_name(figure)
    if not Path(data_root).is_dir():
        raise FparError(
            f"dataset {data_root} not found; give --data ROOT (a GTEA61 folder or `fpar data synth` output)"
        )
    if name == "fig20":
        return figure20(data_root, out=out, log=log)
    ov = [f"data.root={data_root}"]
    if quick:
        ov += quick_overrides(pretrained)
        seeds = seeds if seeds is not None else [0]
    elif pretrained:
        ov.append(f"model.pretrained={pretrained}")
    ov += list(overrides)
    sweep = Path(out) if out else Path("sweeps") / (name + ("-quick" if quick else ""))
    t0 = time.time()
    status = run_sweep(grid_path(name), workers=workers, storage=storage, out=sweep, log=log, extra_overrides=ov,
                       seeds=seeds)  # fmt: skip
    rep = make_report([sweep], sweep / "report", title=f"{name}{' (quick)' if quick else ''}")
    text = "\n\n".join(table_text(t, heading="#") for t in rep["tables"])
    failed = [r for r in status["trials"] if r["state"] in ("failed", "interrupted")]
    log("")
    log(text)
    if quick:
        log("\n(quick: tiny runs on a reduced model; the numbers check the pipeline, not the report's accuracies)")
    if failed:
        log(f"\n{len(failed)} trial(s) failed, e.g. {failed[0]['name']}: {failed[0]['error']}")
    log(f"\nreport: {Path(rep['out']) / 'index.html'} ({time.time() - t0:.0f} s)")
    return {"figure": name, "sweep": str(sweep), "status": status, "report": rep, "table": text}


def figure20(data_root: str | os.PathLike, *, out: str | os.PathLike | None = None, log=print) -> dict[str, Any]:
    """Figure 20 from the first motion map of the first test-subject video that has one."""
    from ..config import DataConfig
    from ..data.dataset import make_splits
    from ..data.readers import read_dataset
    from .report import mmap_downsampling_figure

    data = DataConfig(root=str(data_root))
    manifest = read_dataset(data)
    test = set(make_splits(manifest, data).test)
    videos = [
        manifest.videos[i]
        for i in sorted(range(len(manifest.videos)), key=lambda i: (i not in test, manifest.videos[i].key))
    ]
    for v in videos:
        if v.mmaps:
            path = v.mmaps[min(len(v.mmaps) - 1, len(v.mmaps) // 2)]
            break
    else:
        raise FparError(f"{data_root} has no motion maps (mmaps folders); Figure 20 needs one")
    target = Path(out) if out else Path("fig20.png")
    if target.suffix.lower() != ".png":
        target = target / "fig20.png"
    p = mmap_downsampling_figure(path, target)
    log(f"wrote {p} (from {path})")
    return {"figure": "fig20", "png": str(p), "mmap": path}
