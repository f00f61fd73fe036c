"""`fpar data show`: the report's Figure 6 for one video (frames of each modality side by side)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..config import DataConfig
from ..drawing import stamp, wrapped_band
from ..errors import FparError
from .imageio import read_grey, read_mmap, read_rgb
from .layout import Manifest
from .sampling import uniform_indices
from .transforms import draw_params, transform_flow, transform_mmaps, transform_rgb


def find_video(manifest: Manifest, video: str) -> int:
    """A video by ``S2/take_cup/1`` (subject/class/instance) or by a path inside its folder."""
    key = video.strip("/")
    for i, v in enumerate(manifest.videos):
        if v.key == key:
            return i
    for i, v in enumerate(manifest.videos):  # a clip name (EGTEA) or a narration id (EPIC): class names hold "/"
        if v.instance == key:
            return i
    p = Path(os.path.abspath(video))
    for i, v in enumerate(manifest.videos):
        inst = Path(v.rgb[0]).parent if v.rgb else None
        inst = inst.parent if inst is not None and inst.name == "rgb" else inst
        if inst is not None and (p == inst or inst in p.parents):
            return i
    examples = ", ".join(v.key for v in manifest.videos[:3])
    raise FparError(
        f"video '{video}' not found in {manifest.root}; name it SUBJECT/CLASS/INSTANCE (e.g. {examples}) or by its "
        "clip name / narration id"
    )


def show_video(
    manifest: Manifest,
    index: int,
    out: str | Path,
    *,
    frames: int = 5,
    cfg: DataConfig | None = None,
    transformed: bool = False,
    train: bool = False,
    seed: int = 0,
) -> Path:
    """Write a PNG: one row per sampled frame, columns rgb | flow x | flow y | motion map (Figure 6), each tile
    labelled in its corner and the sheet headed by the video; labels are scaled down and wrapped to fit
    (`fpar.drawing.fit_text`), so none is cut on small frames.

    Raises FparError for ``frames`` < 1, or sizes of ``cfg`` outside 1 <= input_size <= scale_size.

    With ``transformed`` the images are what the model sees after the (test, or ``train``) transform.
    """
    v = manifest.videos[index]
    if frames < 1:
        raise FparError(f"--frames {frames}: show at least 1 frame")
    if seed < 0:
        raise FparError(f"--seed {seed}: give a seed of at least 0")
    if cfg is not None and not 1 <= cfg.input_size <= cfg.scale_size:
        raise FparError(
            f"--input-size {cfg.input_size}, --scale-size {cfg.scale_size}: give sizes with 1 <= --input-size <= "
            "--scale-size"
        )
    idx = uniform_indices(v.num_frames, frames)
    cols = []
    rgb = [read_rgb(v.rgb[k]) for k in idx]
    m = v.num_flows
    fx = [read_grey(v.flow_x[min(k, m - 1)]) for k in idx] if m else None
    fy = [read_grey(v.flow_y[min(k, m - 1)]) for k in idx] if m else None
    mm = [read_mmap(v.mmaps[k]) * 255 for k in idx] if v.mmaps else None
    if transformed:
        cfg = cfg or DataConfig()
        p = draw_params(np.random.default_rng(seed), train=train)
        kw = dict(scale_size=cfg.scale_size, input_size=cfg.input_size)
        x = transform_rgb(rgb, p, **kw)  # (T, 3, S, S) normalised
        mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
        std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
        rgb = list(np.clip((x.numpy() * std + mean) * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
        if fx is not None:
            f = transform_flow(fx, fy, p, **kw).numpy() * 0.226 + 0.449  # (2T, S, S) in [0, 1]
            f = np.clip(f * 255, 0, 255).astype(np.uint8)
            fx, fy = list(f[0::2]), list(f[1::2])
        if mm is not None:
            mm = list(transform_mmaps([m_ // 255 for m_ in mm], p, **kw).numpy() * 255)
    h, w = rgb[0].shape[:2]

    def tile(img, grey=False):
        img = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_GRAY2RGB) if grey else img
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)

    rows = []
    for r in range(len(idx)):
        row = [stamp(rgb[r], f"rgb {idx[r] + 1}")]
        if fx is not None:
            row += [stamp(tile(fx[r], True), "flow x"), stamp(tile(fy[r], True), "flow y")]
        if mm is not None:
            row.append(stamp(tile(mm[r], True), "mmap"))
        rows.append(np.concatenate(row, 1))
        cols = len(row)
    sheet = np.concatenate(rows, 0)
    title = wrapped_band(sheet.shape[1], f"{v.key}  ({v.num_frames} frames, {m} flows, {cols} modalities)", scale=0.5)
    sheet = np.concatenate([title, sheet], 0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    from ..utils import atomic_write_bytes

    atomic_write_bytes(out, buf.tobytes())
    return out
