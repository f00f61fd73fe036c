"""Predict the action of one raw video (a video file or a frame folder) with a trained run.

The clip is built exactly as the test pipeline (:class:`fpar.data.dataset.ClipDataset` with ``train=False``) builds
it from a prepared dataset, so a video gives the scores `fpar eval` would give it once prepared (to float rounding:
predict runs the model with its BatchNorms folded, `OpenRun.for_inference`):

* frames are decoded (PyAV) or read (frame folder) and resized so that their shorter side is ``short_side``, the
  run's ``data.scale_size`` by default, as ``fpar prepare --short-side`` does (a prepared frame folder at that size is
  used unchanged). Flow magnitudes are in pixels of these frames, like the stored flows training saw;
* T = ``data.frames`` frames are chosen with :func:`~fpar.data.sampling.uniform_indices` (``data.sampling``) over the
  N frames and go through the test transform (shorter side to ``scale_size``, centre crop ``input_size``);
* flow models (flow_resnet, two_stream): the N-1 warp flows are those ``fpar prepare`` would write (flow k from frame
  k to k+1, camera motion removed, :func:`~fpar.video.flow.warp_flow`), encoded to 8-bit grey with
  :func:`~fpar.data.flowcodec.encode_flow` (bound 20 px, the values training decoded) and only computed for the
  centred stack of ``data.flow_stack`` flows (:func:`~fpar.data.sampling.flow_stack_start`, ``train=False``; or the
  ``data.flow_stacks_test`` evenly spaced stacks whose scores are averaged). ``flow_method`` defaults to ``"dis"``
  (fast); ``"tvl1"`` is the reference quality that datasets prepared with the default ``fpar prepare`` used.

Long videos are not held in memory whole: past :data:`BUFFER_BYTES` of decoded frames the rest is only counted and
the video is decoded a second time, keeping just the frames the clip needs. A prediction per window over a long video
(``fpar predict --window``) is :mod:`fpar.video.long_video`, which builds each window's clip with :func:`clip_inputs`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fpar.errors import FparError
from fpar.video.io import MAX_SHORT_SIDE

__all__ = ["predict_video", "load_clip", "clip_inputs", "FlowCache", "BUFFER_BYTES"]

log = logging.getLogger(__name__)

BUFFER_BYTES = 512 * 2**20  # decoded frames kept from the first pass before falling back to a second, selective one


# ----------------------------------------------------------------------------------------------- frame selection


def _plan(n: int, cfg, *, rgb: bool, flow: bool, source: Path, flow_seq: bool = False) -> dict[str, Any]:
    """Which frames and flows the clip of an N-frame video uses (the test pipeline's choices): ``{"frames": N,
    "modalities", "rgb": T frame indices, "stacks" / "seq": lists of flow indices, "need": every frame read}``."""
    from fpar.data.sampling import (
        centred_stack_starts,
        flow_stack_start,
        flow_stack_starts,
        stack_indices,
        uniform_indices,
    )

    if n < 1:
        raise FparError(f"no frames decoded from {source}; check the file (or re-encode it with ffmpeg)")
    mods = tuple(m for m, on in (("rgb", rgb), ("flow", flow), ("flow_seq", flow_seq)) if on)
    plan: dict[str, Any] = {"frames": n, "modalities": mods, "rgb": [], "stacks": [], "seq": []}
    if rgb or flow_seq:
        plan["rgb"] = uniform_indices(n, cfg.data.frames, method=cfg.data.sampling)
    if flow or flow_seq:
        L = cfg.data.flow_stack
        if n < L + 1:
            raise FparError(
                f"{source} has {n} frame(s); this flow model stacks {L} consecutive flows, which needs at least "
                f"{L + 1} frames (flow k goes from frame k to k+1); give a longer clip"
            )
        m = n - 1  # flows
        starts = (
            [flow_stack_start(m, L, train=False)]
            if cfg.data.flow_stacks_test <= 1
            else flow_stack_starts(m, L, cfg.data.flow_stacks_test)
        )
        if flow:
            plan["stacks"] = [stack_indices(s, L, m) for s in starts]
        if flow_seq:  # one stack centred on each sampled RGB frame (the recurrent flow streams)
            plan["seq"] = [stack_indices(s, L, m) for s in centred_stack_starts(plan["rgb"], m, L)]
    need = set(plan["rgb"])
    for stack in plan["stacks"] + plan["seq"]:
        for k in stack:
            need.update((k, k + 1))
    plan["need"] = sorted(need)
    return plan


def _frame_folder(path: Path) -> Path:
    """A frame folder holds its images directly or in ``rgb/`` (an instance folder of a prepared dataset)."""
    from fpar.video.io import list_frame_files

    if not list_frame_files(path) and (path / "rgb").is_dir():
        return path / "rgb"
    return path


def _folder_frames(folder: Path, short_side: int, plan_for: Callable[[int], dict]) -> tuple[dict, dict[int, Any]]:
    from fpar.video.io import IMAGE_EXTENSIONS, _read_image_rgb, list_frame_files, resize_short_side

    files = list_frame_files(folder)
    if not files:
        raise FparError(f"no image files in frame folder {folder}; expected {', '.join(IMAGE_EXTENSIONS)} files")
    plan = plan_for(len(files))
    frames = {i: resize_short_side(_read_image_rgb(files[i]), short_side) for i in plan["need"]}
    sizes = {f.shape[:2] for f in frames.values()}
    if len(sizes) > 1:
        raise FparError(f"frames of {folder} differ in size ({sorted(sizes)}); all frames of a clip must match")
    return plan, frames


def _video_frames(
    path: Path, fps: float | None, short_side: int, plan_for: Callable[[int], dict]
) -> tuple[dict, dict[int, Any]]:
    from fpar.video.io import iter_video

    kept: list[np.ndarray] = []
    nbytes = 0
    it = iter_video(path, fps=fps, short_side=short_side)
    for frame in it:
        kept.append(frame)
        nbytes += frame.nbytes
        if nbytes > BUFFER_BYTES:
            break
    else:  # the whole video fits: one pass
        plan = plan_for(len(kept))
        return plan, {i: kept[i] for i in plan["need"]}
    # Too long to hold: count the rest with the same decoder, then decode again keeping only the needed frames.
    n = len(kept) + sum(1 for _ in it)
    del kept
    plan = plan_for(n)
    need, last = set(plan["need"]), max(plan["need"])
    frames: dict[int, np.ndarray] = {}
    it = iter_video(path, fps=fps, short_side=short_side)
    try:
        for i, frame in enumerate(it):
            if i in need:
                frames[i] = frame
            if i >= last:
                break
    finally:
        it.close()  # stops decoding (and closes the container) early
    if len(frames) != len(need):
        raise FparError(f"{path} gave {n} frames on a first pass but fewer on the second; re-encode it with ffmpeg")
    return plan, frames


@dataclass
class FlowCache:
    """Grey frames and 8-bit warp flows by absolute index (flow k goes from frame k to k+1), shared by the clips
    that overlap in a long video so that each flow is computed once; :meth:`drop_before` frees what no later clip
    reads."""

    greys: dict[int, np.ndarray] = field(default_factory=dict)
    flows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def drop_before(self, index: int) -> None:
        for d in (self.greys, self.flows):
            for k in [k for k in d if k < index]:
                del d[k]


def clip_inputs(
    frame: Callable[[int], np.ndarray],
    plan: dict[str, Any],
    cfg,
    *,
    flow_method: str = "dis",
    offset: int = 0,
    cache: FlowCache | None = None,
) -> dict[str, Any]:
    """The test-pipeline tensors of one clip whose frames and flows :func:`_plan` chose (see the module docstring).

    Args:
        frame: ``frame(i)`` gives frame ``i`` as ``(H, W, 3)`` uint8 RGB at the clip's short side; ``i`` counts from
            the start of the video, i.e. ``offset`` + an index of the plan.
        plan: :func:`_plan`'s choice for the clip's N frames (indices from the clip's first frame).
        cfg: the run's config (``data.input_size``, ``scale_size``).
        flow_method: the flow estimator inside :func:`~fpar.video.flow.warp_flow`.
        offset: the index of the clip's first frame in the video (a window of a long video; 0 for a whole clip).
        cache: grey frames and encoded flows already computed (filled here); None: a fresh one.

    Returns:
        ``{"rgb": (T, 3, S, S) | None, "flow": (2L, S, S) or (K, 2L, S, S) | None, "flow_seq": (T, 2L, S, S) | None,
        "new_flows": how many warp flows were computed}`` (float32; no batch dimension).
    """
    import torch

    from fpar.data.flowcodec import encode_flow
    from fpar.data.transforms import CropParams, transform_flow, transform_rgb
    from fpar.video.flow import to_grey, warp_flows

    cache = cache if cache is not None else FlowCache()
    p = CropParams(train=False)
    kw = dict(scale_size=cfg.data.scale_size, input_size=cfg.data.input_size)
    mods = plan["modalities"]
    out: dict[str, Any] = {"rgb": None, "flow": None, "flow_seq": None, "new_flows": 0}
    if "rgb" in mods:
        out["rgb"] = transform_rgb([frame(offset + i) for i in plan["rgb"]], p, **kw)  # (T, 3, S, S)

    def grey(i: int) -> np.ndarray:
        if i not in cache.greys:
            cache.greys[i] = to_grey(frame(i))
        return cache.greys[i]

    # Every flow the clip's stacks need and the cache lacks, computed in one call (tvl1-torch: one batch).
    wanted = (plan["stacks"] if "flow" in mods else []) + (plan["seq"] if "flow_seq" in mods else [])
    missing = sorted({offset + j for idx in wanted for j in idx} - cache.flows.keys())
    if missing:
        flows = warp_flows([(grey(k), grey(k + 1)) for k in missing], flow_method)  # (H, W, 2) each: k -> k+1
        for k, wf in zip(missing, flows):
            cache.flows[k] = (encode_flow(wf[..., 0]), encode_flow(wf[..., 1]))  # uint8 grey, bound 20 px
        out["new_flows"] += len(missing)

    def stack(idx: list[int]) -> torch.Tensor:
        fx = [cache.flows[offset + j][0] for j in idx]
        fy = [cache.flows[offset + j][1] for j in idx]
        return transform_flow(fx, fy, p, **kw)  # (2L, S, S)

    if "flow" in mods:
        stacks = [stack(idx) for idx in plan["stacks"]]
        out["flow"] = stacks[0] if len(stacks) == 1 else torch.stack(stacks)  # (2L, S, S) or (K, 2L, S, S)
    if "flow_seq" in mods:
        out["flow_seq"] = torch.stack([stack(idx) for idx in plan["seq"]])  # (T, 2L, S, S)
    return out


def load_clip(
    video: str | os.PathLike,
    cfg,
    *,
    rgb: bool = True,
    flow: bool = False,
    flow_method: str = "dis",
    fps: float | None = None,
    short_side: int | None = None,
    flow_seq: bool = False,
) -> dict[str, Any]:
    """The model inputs of one video as the test pipeline makes them (see the module docstring).

    Args:
        video: a video file (anything PyAV reads) or a frame folder (images in natural order, or an instance folder
            with an ``rgb/`` subfolder).
        cfg: the run's :class:`~fpar.config.ExperimentConfig` (``data.frames``, ``flow_stack``, ``flow_stacks_test``,
            ``input_size``, ``scale_size``, ``sampling``).
        rgb, flow, flow_seq: which modalities to build (``flow_seq``: a stack centred on each sampled frame).
        flow_method: ``"dis"``, ``"tvl1"`` or ``"farneback"`` (the flow estimator inside the warp flow).
        fps: resample a video file to this frame rate first (ignored for frame folders).
        short_side: shorter side of the frames before the transform; default ``cfg.data.scale_size``.

    Returns:
        ``{"rgb": (1, T, 3, S, S) float32 | None, "flow": (1, 2L, S, S) or (1, K, 2L, S, S) float32 | None,
        "frames": N, "indices": the T sampled frame indices (0-based), "flow_stacks": [[flow indices], ...],
        "crops": the T sampled frames as (S, S, 3) uint8 centre crops, "short_side": int}``.

    Raises:
        FparError: missing / unreadable input, or too few frames for a flow stack.
    """
    from fpar.data.transforms import CropParams, apply_crop, crop_box
    from fpar.video.flow import FLOW_METHODS

    if (flow or flow_seq) and flow_method not in FLOW_METHODS:
        raise FparError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    short_side = int(short_side or cfg.data.scale_size)
    if not 0 < short_side <= MAX_SHORT_SIDE:
        raise FparError(
            f"short_side={short_side} must be a positive number of pixels, at most {MAX_SHORT_SIDE} (an 8K frame's)"
        )
    path = Path(video)
    if not path.exists():
        raise FparError(f"video file or frame folder not found: {path}; give a video file or a folder of frames")

    def plan_for(n: int) -> dict:
        return _plan(n, cfg, rgb=rgb, flow=flow, source=path, flow_seq=flow_seq)

    t0 = time.perf_counter()
    if path.is_dir():
        if fps is not None:
            log.info("%s is a frame folder: fps=%s ignored (frames are used as they are)", path, fps)
        plan, frames = _folder_frames(_frame_folder(path), short_side, plan_for)
    else:
        plan, frames = _video_frames(path, fps, short_side, plan_for)
    t_read = time.perf_counter() - t0

    out: dict[str, Any] = {
        "frames": plan["frames"],
        "indices": plan["rgb"],
        "flow_stacks": plan["stacks"] + plan["seq"],
        "crops": [],
        "short_side": short_side,
    }
    t1 = time.perf_counter()
    x = clip_inputs(frames.__getitem__, plan, cfg, flow_method=flow_method)
    for k in ("rgb", "flow", "flow_seq"):
        out[k] = None if x[k] is None else x[k][None]  # (1, ...): a batch of one
    if rgb:
        chosen = [frames[i] for i in plan["rgb"]]
        h, w = chosen[0].shape[:2]
        box = crop_box(w, h, CropParams(train=False), scale_size=cfg.data.scale_size, input_size=cfg.data.input_size)
        out["crops"] = [apply_crop(f, box, cfg.data.input_size) for f in chosen]  # (S, S, 3) each
    if flow or flow_seq:
        log.info("%s: %d warp flows (%s) in %.2f s", path, x["new_flows"], flow_method, time.perf_counter() - t1)
    log.info("%s: %d frames, %d read in %.2f s", path, plan["frames"], len(frames), t_read)
    return out


# ----------------------------------------------------------------------------------------------- prediction


def _write_cams(crops: list[np.ndarray], attn, out_dir: Path, indices: list[int], caption: list[str]) -> list[str]:
    """One PNG per sampled frame: its CAM overlay captioned with ``caption`` (video, prediction and score) and the
    frame's number in the video."""
    import cv2

    from fpar.drawing import label_overlay
    from fpar.utils import atomic_write_bytes

    names = [out_dir / f"cam{k + 1:02d}_frame{indices[k] + 1:05d}.png" for k in range(len(attn))]
    there = [p for p in names if p.exists()]
    if there:  # checked before the first is written: nothing is overwritten, and no half set is left
        raise FparError(f"{there[0]} exists; nothing was written: give another --cam folder or empty this one")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # attn (T', h, w); T' = T - 1 with the representation-flow layer: map k belongs to the step from frame k to k+1
    for k, (crop, a) in enumerate(zip(crops, attn)):
        img = label_overlay(crop, a.float().numpy(), [*caption, f"frame {indices[k] + 1}"])  # (S + h, S, 3) RGB
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError("PNG encoding failed")
        p = names[k]
        atomic_write_bytes(p, buf.tobytes())
        paths.append(str(p))
    return paths


def predict_video(
    run_or_checkpoint: str | os.PathLike,
    video: str | os.PathLike,
    *,
    top: int = 5,
    cam_out: str | os.PathLike | None = None,
    flow_method: str = "dis",
    fps: float | None = None,
    short_side: int | None = None,
) -> dict[str, Any]:
    """Classify one video file or frame folder with a trained run (any model family).

    Args:
        run_or_checkpoint: a run folder (its ``best.pt``) or a checkpoint file.
        video: a video file or a frame folder.
        top: how many classes to return (at most the number of classes).
        cam_out: folder for CAM overlay PNGs of the sampled frames (``cam01_frame00012.png``, ...): Ego-RNN with CAM
            or two-stream (its RGB stream) only.
        flow_method: flow estimator of the on-the-fly warp flow (flow_resnet / two_stream): ``"dis"`` (fast, default),
            ``"tvl1"`` (reference quality) or ``"farneback"``.
        fps: resample a video file to this frame rate first (None: every frame).
        short_side: shorter side of the frames before the transform (default: the run's ``data.scale_size``).

    Returns:
        ``{"video", "model", "checkpoint", "top": [{"class", "prob"}, ...] (most probable first), "frames": N,
        "sampled": the T RGB frame indices (0-based; empty for flow_resnet), "flow_stacks": [[flow indices], ...] and
        "flow_method" (flow models; flow k goes from frame k to k+1), "cam": [PNG paths] (with ``cam_out``)}``.

    Raises:
        FparError: bad run, missing / unreadable video, too few frames for a flow stack, ``cam_out`` with a model
        that has no CAM.
    """
    import torch

    from fpar.engine.run import open_run
    from fpar.video.flow import FLOW_METHODS

    if top < 1:
        raise FparError(f"top={top} must be >= 1")
    if flow_method not in FLOW_METHODS:
        raise FparError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    run = open_run(run_or_checkpoint)
    cfg, spec, model = run.cfg, run.spec, run.for_inference()  # BN folded, channels_last
    name = spec.name
    reads = set(spec.inputs(cfg, False))
    unknown = reads - {"rgb", "flow", "flow_seq"}
    if unknown:
        raise FparError(f"{run.path}: fpar predict builds rgb and flow inputs; this model reads {', '.join(unknown)}")
    use_rgb, use_flow, use_seq = "rgb" in reads, "flow" in reads, "flow_seq" in reads
    if cam_out is not None:
        reason = spec.attention(model) if spec.attention is not None else "its family has no attention maps"
        if reason is not None:
            raise FparError(f"{run.path} cannot draw --cam: {reason}")

    clip = load_clip(
        video,
        cfg,
        rgb=use_rgb,
        flow=use_flow,
        flow_seq=use_seq,
        flow_method=flow_method,
        fps=fps,
        short_side=short_side,
    )
    batch = {k: clip[k] for k in ("rgb", "flow", "flow_seq") if clip[k] is not None}
    with torch.inference_mode():
        out = spec.forward(model, batch, False)
    probs = out.logits.float().softmax(dim=1)[0]  # (classes,)
    classes = run.classes
    p, c = probs.topk(min(int(top), len(classes)))  # sorted, most probable first
    result: dict[str, Any] = {
        "video": str(video),
        "model": name,
        "checkpoint": str(run.path),
        "top": [{"class": classes[int(i)], "prob": float(v)} for v, i in zip(p, c)],
        "frames": clip["frames"],
        "sampled": clip["indices"],
    }
    if use_flow or use_seq:
        result["flow_stacks"] = clip["flow_stacks"]
        result["flow_method"] = flow_method
    if cam_out is not None:
        if out.attn is None:  # checked above; a model that skipped attention would be a bug
            raise FparError(f"{run.path} returned no attention map")
        from fpar.drawing import prediction_lines

        best = result["top"][0]
        caption = prediction_lines(Path(video).name, [(name, best["class"], best["prob"])])
        result["cam"] = _write_cams(clip["crops"], out.attn[0], Path(cam_out), clip["indices"], caption)
    return result
