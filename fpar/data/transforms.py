"""Clip-consistent spatial transforms and motion-map targets.

One random draw per clip (:class:`CropParams`) is shared by every RGB frame, every flow image and every motion map of
the clip, as ``randomize_parameters()`` once per sample did in the original code (reference-spec §7.4):

* training: shorter side to ``scale_size`` (256), random horizontal flip, multi-scale corner crop
  (crop side = scale x shorter side, scale in {1, 0.875, 0.75, 0.65625}; position in {centre, tl, tr, bl, br}),
  resized to ``input_size``;
* test: shorter side to ``scale_size`` and a centre crop of ``input_size``.

The scale-then-crop-then-resize chain is computed as ONE crop in the original image followed by ONE resize (the
same region, less interpolation blur than two resizes). Deliberate differences from the original: the tr/bl crops
are not one pixel short (§9 item 5), and a flipped x-flow is ``256 - v`` so that 128 ("no motion") stays 128
(the original's ``255 - v`` maps it to 127, §9 item 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SCALES = (1.0, 0.875, 0.75, 0.65625)
POSITIONS = ("c", "tl", "tr", "bl", "br")
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
FLOW_MEAN, FLOW_STD = 0.449, 0.226


@dataclass(frozen=True)
class CropParams:
    scale: float = 1.0
    position: str = "c"
    flip: bool = False
    train: bool = False


def draw_params(rng: np.random.Generator, *, train: bool) -> CropParams:
    """The one random draw of a clip."""
    if not train:
        return CropParams(train=False)
    return CropParams(
        scale=float(SCALES[rng.integers(len(SCALES))]),
        position=POSITIONS[rng.integers(len(POSITIONS))],
        flip=bool(rng.integers(2)),
        train=True,
    )


DRAWS = len(SCALES) * len(POSITIONS) * 2  # distinct training draws of a clip (40)


def draw_code(p: CropParams) -> int:
    """A clip's draw as one number: -1 for the test transform, else 0..DRAWS-1 (scale, corner, flip). Everything a
    frame's crop depends on besides the video and the frame (`fpar.engine.feature_cache` keys on it)."""
    if not p.train:
        return -1
    return (SCALES.index(p.scale) * len(POSITIONS) + POSITIONS.index(p.position)) * 2 + int(p.flip)


def draw_from_code(code: int) -> CropParams:
    """The training draw that `draw_code` numbers ``code`` (0..DRAWS-1)."""
    if not 0 <= code < DRAWS:
        raise ValueError(f"a training draw's code is in 0..{DRAWS - 1}, got {code}")
    scale, rest = divmod(code, len(POSITIONS) * 2)
    position, flip = divmod(rest, 2)
    return CropParams(scale=SCALES[scale], position=POSITIONS[position], flip=bool(flip), train=True)


# The last word of the pool's random streams, so that they are no other stream of a run: without it the pool's
# [seed, video, 40, k] would be, for k=1, a training clip's [seed, epoch=video, video=40, train=1] (`ClipDataset`),
# and numpy pads shorter seed lists with zeros, so lists of different lengths can meet too.
_POOL_STREAM = 0x706F6F6C  # "pool"


def draw_pool(seed: int, video: int, k: int) -> list[int]:
    """The codes of the ``k`` draws that ``data.draw_pool=k`` limits video ``video`` (manifest index) to: ``k``
    distinct draws, fixed for the run's seed and the video over all epochs, chosen uniformly among the DRAWS, sorted.
    A random stream of its own (`_POOL_STREAM`): the pool leaves every other random choice of a clip (its flow stack,
    its static frame) as it is without one."""
    rng = np.random.default_rng([seed, video, DRAWS, k, _POOL_STREAM])
    return sorted(int(c) for c in rng.choice(DRAWS, size=k, replace=False))


def pooled_draw(seed: int, epoch: int, video: int, k: int) -> CropParams:
    """A training clip's draw under ``data.draw_pool=k`` at ``epoch`` (0-based): each block of ``k`` epochs shows each
    of the video's `draw_pool` once, in an order drawn per block and video. So every pooled draw has occurred after
    the first ``k`` epochs (a feature cache is then full), and each is seen equally often."""
    pool = draw_pool(seed, video, k)
    block, step = divmod(epoch, k)
    order = np.random.default_rng([seed, block, video, DRAWS, k, _POOL_STREAM]).permutation(k)
    return draw_from_code(pool[int(order[step])])


def crop_box(w: int, h: int, p: CropParams, *, scale_size: int, input_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in the ORIGINAL image for the crop that the scale+crop chain would take."""
    r = scale_size / min(w, h)  # resize factor of Scale(scale_size)
    sw, sh = w * r, h * r  # scaled image size
    side = p.scale * scale_size if p.train else float(input_size)  # crop side in scaled pixels
    side = min(side, sw, sh)
    pos = {
        "c": ((sw - side) / 2, (sh - side) / 2),
        "tl": (0.0, 0.0),
        "tr": (sw - side, 0.0),
        "bl": (0.0, sh - side),
        "br": (sw - side, sh - side),
    }[p.position]
    x0, y0 = pos[0] / r, pos[1] / r
    s = side / r
    xi, yi = int(round(x0)), int(round(y0))
    si = max(1, int(round(s)))
    xi, yi = min(max(xi, 0), w - si), min(max(yi, 0), h - si)
    return xi, yi, xi + si, yi + si


def apply_crop(img: np.ndarray, box: tuple[int, int, int, int], size: int, *, nearest: bool = False) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = img[y0:y1, x0:x1]
    if crop.shape[0] != size or crop.shape[1] != size:
        interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR)
        crop = cv2.resize(crop, (size, size), interpolation=interp)
    return crop


def crop_rgb(frames: list[np.ndarray], p: CropParams, *, scale_size: int, input_size: int) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (T, 3, S, S) uint8: the clip's crop, resize and flip, not yet normalised.

    This is what `fpar.data.dataset.ClipDataset` returns: a quarter of the bytes of the float clip through the
    DataLoader's workers and to the GPU, normalised there by `normalize_rgb` (`normalize_batch`)."""
    h, w = frames[0].shape[:2]
    x0, y0, x1, y1 = crop_box(w, h, p, scale_size=scale_size, input_size=input_size)
    size = input_size
    resize = (y1 - y0, x1 - x0) != (size, size)
    interp = cv2.INTER_AREA if y1 - y0 > size else cv2.INTER_LINEAR  # as apply_crop chooses
    # each frame is resized and flipped straight into its slot of the clip: the same pixels as apply_crop, a
    # stack and a flipped copy, without the two extra passes over the clip
    out = np.empty((len(frames), size, size, 3), np.uint8)  # (T, S, S, 3)
    for t, f in enumerate(frames):
        crop = f[y0:y1, x0:x1]
        if resize and p.flip:
            cv2.flip(cv2.resize(crop, (size, size), interpolation=interp), 1, dst=out[t])
        elif resize:
            cv2.resize(crop, (size, size), dst=out[t], interpolation=interp)
        elif p.flip:
            cv2.flip(crop, 1, dst=out[t])
        else:
            out[t] = crop
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # (T, 3, S, S) uint8 (a view)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) uint8 -> float32 in ImageNet normalisation: (x / 255 - mean) / std, on x's device."""
    x = x.float().div_(255.0)
    mean = torch.tensor(RGB_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(RGB_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def normalize_batch(batch: dict) -> dict:
    """The batch with its uint8 ``rgb`` normalised (`normalize_rgb`); an ``rgb`` list (clips the feature cache
    skipped are None) is normalised element by element. Anything else is returned as it is."""
    rgb = batch.get("rgb")
    if torch.is_tensor(rgb) and rgb.dtype == torch.uint8:
        return {**batch, "rgb": normalize_rgb(rgb)}
    if isinstance(rgb, list):
        fixed = [normalize_rgb(r) if torch.is_tensor(r) and r.dtype == torch.uint8 else r for r in rgb]
        return {**batch, "rgb": fixed}
    return batch


def transform_rgb(frames: list[np.ndarray], p: CropParams, *, scale_size: int, input_size: int) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (T, 3, S, S) float32, ImageNet-normalised (`crop_rgb`, then `normalize_rgb`)."""
    return normalize_rgb(crop_rgb(frames, p, scale_size=scale_size, input_size=input_size))


def transform_flow(fx: list[np.ndarray], fy: list[np.ndarray], p: CropParams, *, scale_size: int, input_size: int):
    """L x-flows and L y-flows (H, W) uint8 -> (2L, S, S) float32 with channels x0, y0, x1, y1, ...

    A horizontal flip mirrors both and negates the x component (``256 - v`` keeps 128 at 128).
    """
    h, w = fx[0].shape[:2]
    box = crop_box(w, h, p, scale_size=scale_size, input_size=input_size)
    xs = np.stack([apply_crop(f, box, input_size) for f in fx]).astype(np.int16)  # (L, S, S)
    ys = np.stack([apply_crop(f, box, input_size) for f in fy]).astype(np.int16)
    if p.flip:
        xs = np.clip(256 - xs[:, :, ::-1], 0, 255)
        ys = ys[:, :, ::-1]
    stack = np.stack([xs, ys], axis=1).reshape(-1, input_size, input_size)  # (L, 2, S, S) -> (2L, S, S)
    x = torch.from_numpy(np.ascontiguousarray(stack)).float().div_(255.0)
    return (x - FLOW_MEAN) / FLOW_STD


def transform_mmaps(maps: list[np.ndarray], p: CropParams, *, scale_size: int, input_size: int) -> torch.Tensor:
    """List of (H, W) {0,1} uint8 -> (T, S, S) uint8, nearest-neighbour so the maps stay binary."""
    h, w = maps[0].shape[:2]
    box = crop_box(w, h, p, scale_size=scale_size, input_size=input_size)
    out = np.stack([apply_crop(m, box, input_size, nearest=True) for m in maps])
    if p.flip:
        out = out[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out))


def downsample_mmaps(maps: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """Motion-map targets at the resolution of the feature map a head reads.

    Args:
        maps: (..., H, W) binary maps (any dtype) at the input resolution.
        size: output side s (7, 14 or 28 at 224 input).
        method: ``bw``: plain downsampling, the pixel at each block's centre (row floor((i + 0.5) H / s)), so the
            result stays black and white; ``grid``: the "grid technique", the mean of each block (grey values in
            [0, 1]; adaptive pooling when blocks do not divide evenly).
    Returns:
        (..., s, s) float32.
    """
    lead = maps.shape[:-2]
    h, w = maps.shape[-2:]
    m = maps.reshape(-1, 1, h, w).float()  # (N, 1, H, W)
    if method == "bw":
        rows = ((torch.arange(size) + 0.5) * h / size).floor().long()
        cols = ((torch.arange(size) + 0.5) * w / size).floor().long()
        out = m[:, :, rows][:, :, :, cols]
    elif method == "grid":
        out = F.adaptive_avg_pool2d(m, size)
    else:
        raise ValueError(f"expected method 'bw' or 'grid', got {method!r}")
    return out.reshape(*lead, size, size)
