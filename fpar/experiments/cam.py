"""CAM overlays (report Figures 10-11) and, for MS models, predicted vs ground-truth motion maps (17-18, 22-23).

Which maps a model has is its spec's business: ``attention`` (does ``forward`` fill ``ModelOutput.attn``) and
``aux_maps`` (extra per-frame pictures, such as the motion-segmentation prediction and its target).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.sampling import uniform_indices
from ..data.show import find_video
from ..data.transforms import normalize_batch
from ..drawing import BLACK, GREEN, RED, grey_tile, overlay, prediction_lines, stamp, title_row, wrapped_band
from ..engine.run import OpenRun
from ..errors import FparError
from ..utils import atomic_write_bytes


@torch.no_grad()
def cam_figure(
    run: OpenRun, video: str, out: str | Path, *, data_root: str | None = None, compare: OpenRun | None = None
) -> Path:
    """Write a PNG with one row per sampled frame: frame | attention overlay [| attention of ``compare``]
    [| the model's extra maps (MS predicted | MS ground truth)], headed by the column names and footed by
    `fpar.drawing.prediction_lines`: the video, its true class (when labelled), and each model's predicted class
    with its softmax probability (the compared one named ``FAMILY (compare)``), green when right, red when wrong.
    Each frame tile carries its frame number in the video. Every label is scaled down and wrapped to its tile or to
    the sheet (`fpar.drawing.fit_text`), so none is cut at 64 px. ``run`` (and ``compare``) come from
    `fpar.engine.run.open_run`."""
    spec, model, cfg = run.spec, run.model, run.cfg
    reason = spec.attention(model) if spec.attention is not None else "its family has no attention maps"
    if "rgb" not in spec.inputs(cfg, False):
        raise FparError(f"{run.path} is a {spec.name} model, which reads no RGB frames: {reason or 'no CAM to show'}")
    if reason is not None and compare is None:
        raise FparError(f"{run.path}: {reason}")
    if compare is not None and tuple(compare.spec.inputs(compare.cfg, False)) != ("rgb",):
        reads = "+".join(compare.spec.inputs(compare.cfg, False))
        raise FparError(
            f"--compare {compare.path} is a {compare.spec.name} model, which reads {reads}: the comparison runs "
            "on this clip's RGB frames alone; compare with a run of an RGB model"
        )
    manifest = run.manifest(data_root)
    idx = find_video(manifest, video)
    ds = run.dataset(manifest, [idx], with_train_inputs=True)
    if not ds.indices:  # the video lacks a training-only modality (motion maps): show what inference reads
        ds = run.dataset(manifest, [idx])
    item = ds[0]
    batch = normalize_batch({k: v[None] for k, v in item.items() if torch.is_tensor(v)})
    out_ = spec.forward(model.eval(), {k: v for k, v in batch.items() if k != "mmaps"}, False)
    extra = spec.aux_maps(model, _with_aux(spec, model, batch), batch, cfg) if spec.aux_maps is not None else {}
    s = cfg.data.input_size
    rec = manifest.videos[idx]
    numbers = uniform_indices(rec.num_frames, cfg.data.frames, method=cfg.data.sampling)  # the dataset's sampling
    frames = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in item["rgb"]]  # (S, S, 3) uint8 crops
    cols = {"frame": [stamp(f, f"frame {k + 1}") for f, k in zip(frames, numbers)]}
    if out_.attn is not None:
        cols[f"{spec.name} attention"] = [overlay(f, a.numpy()) for f, a in zip(frames, out_.attn[0])]
    predictions = [_top(spec.name, out_.logits, run.classes)]
    if compare is not None:
        other = compare.spec.forward(compare.model.eval(), {"rgb": batch["rgb"]}, False)
        name = f"{compare.spec.name} (compare)"
        if other.attn is not None:
            cols[f"{name} attention"] = [overlay(f, a.numpy()) for f, a in zip(frames, other.attn[0])]
        predictions.append(_top(name, other.logits, compare.classes))
    for title, maps in extra.items():
        cols[title] = [grey_tile(m, s) for m in maps]
    n = min(len(v) for v in cols.values())  # rep-flow: T-1 attention maps for T frames
    rows = [np.concatenate([cols[k][t] for k in cols], 1) for t in range(n)]
    sheet = np.concatenate(rows, 0)
    head = title_row(list(cols), s)
    y = int(item["label"])
    truth = run.classes[y] if 0 <= y < len(run.classes) else None  # EPIC's test split: -1, no label
    lines = prediction_lines(rec.key, predictions, truth=truth)
    colours = [BLACK] * (len(lines) - len(predictions))
    colours += [BLACK if truth is None else GREEN if label == truth else RED for _, label, _ in predictions]
    sheet = np.concatenate([head, sheet, wrapped_band(sheet.shape[1], lines, colours=colours)], 0)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FparError(f"could not encode the CAM figure for {video}")
    out = Path(out)
    atomic_write_bytes(out, buf.tobytes())
    return out


def _top(name: str, logits: torch.Tensor, classes: list[str]) -> tuple[str, str, float]:
    """(model name, predicted class, its softmax probability) of a (1, C) logit row."""
    p, c = logits.float().softmax(1)[0].max(0)
    return name, classes[int(c)], float(p)


def _with_aux(spec, model, batch):
    """The forward pass with training-only outputs (the MS head) but no dropout or BN updates: eval mode, train=True
    inputs. Without the motion maps in the batch there is nothing to compare them with, and no extra pass runs."""
    if "mmaps" not in batch:
        return spec.forward(model.eval(), batch, False)
    static = {k: v for k, v in batch.items() if k != "static_idx"}  # no discriminator pass
    return spec.forward(model.eval(), static, True)
