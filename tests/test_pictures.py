"""Readable pictures: labels measured and fitted to their picture (fpar.drawing), CAM figures that say what was
predicted, report figures that survive an outlier run and say when the test set selected the epochs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpar.config import load_config, save_config
from fpar.data.transforms import normalize_rgb
from fpar.drawing import (
    MIN_SCALE,
    PAD,
    SCALE,
    caption,
    fit_text,
    format_score,
    label_overlay,
    overlay,
    prediction_lines,
    stamp,
    text_width,
    title_row,
    wrapped_band,
)
from fpar.experiments import figures
from fpar.experiments.figures import epoch_curves, point_summary, robust_range, run_curves
from fpar.experiments.report import make_report

from .conftest import tiny_args

LONG = prediction_lines(
    "S2/open_honey_and_close_the_jar_again/1",
    [("ego_rnn", "put_cup_into_sugar_box", 0.4321), ("lsta (compare)", "take_cup", 0.1)],
    truth="take_cup",
)


# --------------------------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize("width", [64, 112, 224])
def test_fitted_lines_fit_the_band_and_keep_every_character(width):
    f = fit_text(LONG, width)
    assert MIN_SCALE <= f.scale <= SCALE
    assert all(text_width(line, f.scale) <= width - 2 * PAD for line in f.lines)
    for i, paragraph in enumerate(LONG):  # nothing dropped: each paragraph's lines hold its characters, in order
        mine = "".join(line for line, k in zip(f.lines, f.paragraph) if k == i)
        assert mine.replace(" ", "") == paragraph.replace(" ", "")
    assert f.paragraph == sorted(f.paragraph)  # each paragraph starts a new line


def test_fit_text_shrinks_before_it_cuts_and_cuts_at_separators():
    assert fit_text("frame", 224).scale == SCALE  # fits: full size
    f = fit_text("attention", 50)  # too wide at SCALE, fits whole once shrunk
    assert f.lines == ["attention"] and MIN_SCALE <= f.scale < SCALE
    f = fit_text("S2/open_honey_and_close/1", 64)  # too wide even at MIN_SCALE: cut after / and _
    assert f.scale == MIN_SCALE and len(f.lines) > 1
    assert all(line[-1] in "/_" for line in f.lines[:-1])
    with pytest.raises(ValueError, match="at least"):
        fit_text("x", 10)


@pytest.mark.parametrize("width", [64, 112])
def test_caption_band_is_the_image_width_and_its_ink_stays_inside(width):
    img = np.zeros((width, width, 3), np.uint8)
    out = caption(img, LONG)
    assert out.shape[1] == width and out.shape[0] > width
    assert (out[:width] == img).all()  # the picture itself is untouched
    band = out[width:]
    ink = (band < 255).any(2)
    assert ink.any()
    assert not ink[:, -2:].any() and not ink[-2:].any()  # no text reaches the right or bottom edge
    assert not ink[:, :2].any() and not ink[:2].any()
    above = caption(img, "video S2/take_cup/1", above=True)
    assert (above[-width:] == img).all() and above.shape[1] == width


def test_label_overlay_is_the_overlay_with_a_caption():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    attn = rng.random((7, 7)).astype(np.float32)
    out = label_overlay(img, attn, LONG)
    assert out.dtype == np.uint8 and out.shape[1] == 64
    assert (out[:64] == overlay(img, attn)).all()
    assert out.shape[0] == 64 + wrapped_band(64, LONG).shape[0]


def test_stamp_and_title_row_fit_small_tiles():
    tile = np.zeros((64, 64, 3), np.uint8)
    s = stamp(tile, "flow x of a very_long_modality_name")
    ink = s.any(2)
    assert ink.any() and not ink[:, -2:].any() and (tile == 0).all()  # drawn on a copy, inside the tile
    row = title_row(["frame", "ego_rnn attention", "lsta (compare) attention"], 64)
    assert row.shape[1] == 3 * 64
    for k in range(3):
        assert not (row[:, (k + 1) * 64 - 2 : (k + 1) * 64] < 255).any()  # each title stays in its column


def test_prediction_lines_and_scores():
    assert prediction_lines("S2/take_cup/1", [("ego_rnn", "put_cup", 0.4321)], truth="take_cup") == [
        "video S2/take_cup/1",
        "true take_cup",
        "ego_rnn: predicted put_cup 43.2% (wrong)",
    ]
    assert prediction_lines("kitchen.mp4", [("", "take_cup", 1.0)]) == [
        "video kitchen.mp4",
        "predicted take_cup 100.0%",
    ]
    assert prediction_lines("v", [("a", "x", 0.5), ("b (compare)", "y", 0.25)], truth="x")[2:] == [
        "a: predicted x 50.0% (correct)",
        "b (compare): predicted y 25.0% (wrong)",
    ]
    assert format_score(0.0004) == "0.0%"
    with pytest.raises(ValueError, match="probability"):
        format_score(1.5)


# --------------------------------------------------------------------------------------------------------------
# CAM figure and data show on the tiny data


@pytest.fixture(scope="module")
def tiny_run(tiny_root, tmp_path_factory):
    from fpar.engine.trainer import train

    run = tmp_path_factory.mktemp("pictures") / "rgb"
    train(load_config(None, [*tiny_args(tiny_root), "train.epochs=1", "train.max_batches=1", f"out={run}"]), log=print)
    return run


def test_cam_figure_footer_names_video_truth_prediction_and_score(tiny_run, tmp_path, monkeypatch):
    from fpar.engine.run import open_run
    from fpar.experiments import cam

    seen = []
    monkeypatch.setattr(cam, "prediction_lines", lambda *a, **k: seen.append((a, k)) or prediction_lines(*a, **k))
    run = open_run(tiny_run)
    manifest = run.manifest()
    i = run.test_indices(manifest)[0]
    video = manifest.videos[i]
    png = cam.cam_figure(run, video.key, tmp_path / "cam.png", compare=open_run(tiny_run))
    ((args, kw),) = seen
    assert args[0] == video.key and kw["truth"] == run.classes[video.label]
    # the scores are the softmax of the model's logits on the test clip
    item = run.dataset(manifest, [i])[0]
    probs = (
        run.spec.forward(run.model.eval(), {"rgb": normalize_rgb(item["rgb"][None])}, False)
        .logits.detach()
        .softmax(1)[0]
    )
    p, c = probs.max(0)
    (m1, label1, p1), (m2, label2, p2) = args[1]
    assert (m1, label1) == ("ego_rnn", run.classes[int(c)]) and p1 == pytest.approx(float(p), abs=1e-5)
    assert m2 == "ego_rnn (compare)" and (label2, p2) == (label1, pytest.approx(p1))
    img = cv2.imread(str(png))
    s = run.cfg.data.input_size
    assert img.shape[1] == 3 * s  # frame | attention | compared attention, nothing wider
    assert img.shape[0] > run.cfg.data.frames * s + wrapped_band(3 * s, prediction_lines(*args, **kw)).shape[0]


def test_data_show_title_fits_a_small_sheet(tiny_root, tmp_path):
    from fpar.config import DataConfig
    from fpar.data.readers import read_dataset
    from fpar.data.show import show_video

    m = read_dataset(DataConfig(root=str(tiny_root)))
    cfg = DataConfig(input_size=32, scale_size=32)  # 4 tiles of 32 px: a 128 px sheet for a 60-character title
    img = cv2.imread(str(show_video(m, 0, tmp_path / "s.png", frames=2, cfg=cfg, transformed=True)))
    assert img.shape[1] == 4 * 32
    band = img[: img.shape[0] - 2 * 32]
    assert band.shape[0] > 30  # the title wrapped over several lines instead of running off the sheet
    assert (band[:, -2:] == 255).all()


# --------------------------------------------------------------------------------------------------------------
# Report figures: outliers, log axes, "selected on test"


@pytest.mark.parametrize(
    "values, log_ok, log, inside, outside",
    [
        ([0.9, 1.0, 1.1, 1.2, 1.3, 1e6], True, False, [0.9, 1.3], [1e6]),  # one diverged loss: cut, linear
        ([4.0, 2.0, 1.0, 0.5, 0.1, 0.03, 0.01, 0.005], True, True, None, []),  # a loss falling 3 decades: log
        ([50.0, 52.0, 55.0, 58.0, 60.0, 2.0], False, False, [50.0, 60.0], [2.0]),  # one failed run among 50-60%
        ([60.0, 60.0, 60.0, 2.0], False, False, None, []),  # nothing to squeeze: a full axis
        ([50.0, 52.0, 55.0, 58.0, 60.0, 35.0], False, False, None, []),  # a weak run, not an outlier worth cutting
        ([0.5, 5.0, 50.0, 60.0], False, False, None, []),  # accuracies spanning decades stay linear
        ([], True, False, None, []),
    ],
)
def test_robust_range(values, log_ok, log, inside, outside):
    r = robust_range(values, log_ok=log_ok)
    assert r.log is log
    if inside is None:
        assert r.limits is None
        return
    lo, hi = r.limits
    assert all(lo < v < hi for v in inside) and all(not lo <= v <= hi for v in outside)


@pytest.fixture
def saved(monkeypatch):
    """The matplotlib figures the report module saves, by file name."""
    out = {}
    save = figures._save

    def spy(fig, path):
        out[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    return out


def _history(losses, accs):
    return [
        {"epoch": e, "lr": 1e-3, "train_loss": 1.0, "train_top1": 50.0, "val_loss": loss, "val_top1": acc}
        for e, (loss, acc) in enumerate(zip(losses, accs), 1)
    ]


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(parts)


def test_epoch_curves_keep_the_others_readable_beside_a_diverged_run(tmp_path, saved):
    series = {
        "a": [_history([2.0, 1.5, 1.2, 1.0], [20, 40, 50, 55])],
        "b": [_history([2.2, 1.6, 1.3, 1.1], [25, 45, 52, 58])],
        "diverged": [_history([2.1, 1e6, 1e6, 1e6], [20, 2, 2, 2])],
    }
    epoch_curves(series, "val_loss", tmp_path / "loss.png", ylabel="validation loss", title="T")
    (ax,) = saved["loss.png"].axes
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "linear" and lo <= 1.0 and 2.2 <= hi < 10  # every other loss shown, 1e6 cut
    assert "3 values off the axis" in ax.get_title()
    edge = [ln for ln in ax.get_lines() if ln.get_marker() == "^"]  # the cut values, marked at the top edge
    assert len(edge) == 1 and list(edge[0].get_xdata()) == [2, 3, 4] and set(edge[0].get_ydata()) == {hi}
    assert any(t.get_text() == "1e+06" for t in ax.texts)
    falling = {
        "a": [_history([4.0, 0.4, 0.04, 0.004], [10, 20, 30, 40])],
        "b": [_history([3, 0.3, 0.03, 0.01], [0] * 4)],
    }
    epoch_curves(falling, "val_loss", tmp_path / "falling.png", ylabel="validation loss")
    assert saved["falling.png"].axes[0].get_yscale() == "log"
    epoch_curves(falling, "val_top1", tmp_path / "acc.png", ylabel="accuracy")
    assert saved["acc.png"].axes[0].get_yscale() == "linear"


def test_run_curves_cut_a_loss_spike_and_name_the_test_selection(tmp_path, saved):
    h = _history([2.0, 1.5, 1e6, 1.1, 1.0, 0.9], [10, 20, 30, 40, 50, 45])
    run_curves(h, tmp_path / "c.png", title="x (selected on test)", select_on="test", best_epoch=5)
    fig = saved["c.png"]
    acc, loss = fig.axes
    assert loss.get_ylim()[1] < 10 and "1 value off the axis" in loss.get_title()
    legend = [t.get_text() for t in acc.get_legend().get_texts()]
    assert "test (epochs selected on test)" in legend and "selected epoch 5 on test" in legend
    star = next(ln for ln in acc.get_lines() if ln.get_marker() == "*")
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([5], [50])


def test_point_summary_marks_a_failed_run_at_the_edge(tmp_path, saved):
    points = [("lr=1e-3", [50.0, 55.0, 58.0, 60.0, 2.0], None), ("lr=1e-4", [52.0, 57.0], 56.0)]
    point_summary(points, tmp_path / "p.png", xlabel="best top-1 (%)")
    (ax,) = saved["p.png"].axes
    lo, hi = ax.get_xlim()
    assert lo > 2.0 and lo < 50.0 and hi > 60.0
    left = [ln for ln in ax.get_lines() if ln.get_marker() == "<"]
    assert len(left) == 1 and list(left[0].get_xdata()) == [lo] and list(left[0].get_ydata()) == [1]  # top row
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lr=1e-4", "lr=1e-3"]


def _run(folder: Path, name: str, seed: int, best: float, select_on: str, lr: float = 1e-3) -> None:
    """A finished run folder without training (config.yaml, metrics.jsonl, summary.json)."""
    folder.mkdir(parents=True)
    save_config(load_config(None, [f"name={name}", f"seed={seed}", f"optim.lr={lr}"]), folder / "config.yaml")
    rows = _history([2.0, 1.5, 1.2], [30.0, best, best - 5])
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"name": name, "seed": seed, "best_top1": best, "best_epoch": 2, "videos": 10, "select_on": select_on}
    if select_on == "val":
        summary["test_top1"] = best - 3
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_says_selected_on_test_in_tables_and_figures(tmp_path, saved):
    for seed, best in enumerate([50.0, 55.0]):
        _run(tmp_path / "t" / f"a{seed}", "a", seed, best, "test")
    r = make_report([tmp_path / "t"], tmp_path / "rep")
    assert "| row | n | best top-1 (mean ± std, selected on test) |" in r["markdown"]
    rows = list(csv.DictReader((tmp_path / "rep" / "table.csv").open()))
    assert rows[0]["select_on"] == "test"
    assert {"runs_val_top1.png", "runs_val_loss.png", "runs_points.png", "runs_a1_curves.png"} <= set(saved)
    for name, fig in saved.items():
        assert "selected on test" in _texts(fig), name
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "selected on test" in html.split("<table>")[0]  # the protocol line above the table

    # a table that mixes protocols marks only the rows selected on test
    saved.clear()
    _run(tmp_path / "m" / "v0", "v", 0, 60.0, "val")
    _run(tmp_path / "m" / "t0", "t", 0, 58.0, "test", lr=1e-4)
    r = make_report([tmp_path / "m"], tmp_path / "rep_mixed")
    md = r["markdown"]
    assert "| t (selected on test) |" in md and "| v |" in md.replace("**", "")
    assert "selected on test)" not in next(line for line in md.splitlines() if line.startswith("| row"))
    legend = [t.get_text() for t in saved["runs_val_top1.png"].axes[0].get_legend().get_texts()]
    assert sorted(legend) == ["t (selected on test)", "v"]
    assert "selected on test" not in _texts(saved["runs_v0_curves.png"])
    assert "selected on test" in _texts(saved["runs_t0_curves.png"])
