"""CAM overlays (report Figures 10-11) and, for MS models, predicted vs ground-truth motion maps (17-18, 22-23)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import from_dict
from ..data.dataset import ClipDataset
from ..data.layout import discover
from ..data.show import find_video
from ..data.transforms import RGB_MEAN, RGB_STD
from ..engine.losses import ms_targets
from ..errors import FparError
from ..utils import atomic_write_bytes


def overlay(image: np.ndarray, attn: np.ndarray) -> np.ndarray:
    """The original visualisation: min-max scaled map, resized to the crop, JET colour map, 0.3 heat + 0.5 image."""
    a = attn - attn.min()
    a = (255 * a / max(a.max(), 1e-12)).astype(np.uint8)
    a = cv2.resize(a, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap(a, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.clip(0.3 * heat + 0.5 * image, 0, 255).astype(np.uint8)


def _denorm(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(RGB_MEAN).view(3, 1, 1)
    std = torch.tensor(RGB_STD).view(3, 1, 1)
    return (255 * (x * std + mean)).clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _grey(m: np.ndarray, size: int) -> np.ndarray:
    g = (255 * np.clip(m, 0, 1)).astype(np.uint8)
    g = cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)


@torch.no_grad()
def cam_figure(model, info: dict, video: str, out: str | Path, *, data_root: str | None = None, compare=None) -> Path:
    """Write a PNG with one row per sampled frame: frame | CAM overlay [| CAM of ``compare`` model] [| MS prediction |
    MS ground truth]. ``model`` is an Ego-RNN (or two-stream: its RGB stream) loaded with `fpar.load_run`."""
    cfg = from_dict(info["config"])
    if cfg.model.name == "flow_resnet":
        raise FparError("a flow model has no CAM; give an Ego-RNN or two-stream run")
    if data_root:
        cfg.data.root = data_root
    rgb_model = model.rgb if cfg.model.name == "two_stream" else model
    if not rgb_model.cam and compare is None:
        raise FparError("this run was trained with model.cam=false: it has no attention map to show")
    manifest = discover(cfg.data.root, frames_dir=cfg.data.frames_dir)
    idx = find_video(manifest, video)
    has_ms = rgb_model.ms_head is not None and bool(manifest.videos[idx].mmaps)
    mods = ("rgb", "mmaps") if has_ms else ("rgb",)
    item = ClipDataset(manifest, [idx], cfg.data, modalities=mods, train=False)[0]
    rgb = item["rgb"][None]  # (1, T, 3, S, S)
    out_ = rgb_model.eval()(rgb, with_ms=has_ms)
    s = cfg.data.input_size
    frames = [_denorm(f) for f in item["rgb"]]
    cols = {"frame": frames}
    if out_.attn is not None:
        cols["CAM"] = [overlay(f, a.numpy()) for f, a in zip(frames, out_.attn[0])]
    if compare is not None:
        c = compare.eval()(rgb, with_ms=False)
        if c.attn is not None:
            cols["CAM (compare)"] = [overlay(f, a.numpy()) for f, a in zip(frames, c.attn[0])]
    if has_ms:
        pred = out_.ms[0]  # (T, K, s, s)
        pm = pred.softmax(1)[:, 1] if pred.shape[1] == 2 else pred[:, 0]
        gt = ms_targets(item["mmaps"][None], pred.shape[-1], cfg.model.ms.target, cfg.model.ms.task)[0]
        cols["MS predicted"] = [_grey(p.numpy(), s) for p in pm]
        cols["MS ground truth"] = [_grey(g.float().numpy(), s) for g in gt]
    rows = [np.concatenate([cols[k][t] for k in cols], 1) for t in range(len(frames))]
    sheet = np.concatenate(rows, 0)
    head = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    for j, k in enumerate(cols):
        cv2.putText(head, k, (j * s + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    probs = out_.logits.softmax(1)[0]
    p, c = probs.max(0)
    foot = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    txt = f"{manifest.videos[idx].key}: predicted {info['classes'][int(c)]} ({100 * float(p):.0f}%)"
    cv2.putText(foot, txt, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([head, sheet, foot], 0)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    out = Path(out)
    atomic_write_bytes(out, buf.tobytes())
    return out
