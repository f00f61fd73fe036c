"""Clip dataset and subject splits.

Every random choice of a sample (crop, flip, flow-stack start, the discriminator's static frame) comes from a
generator seeded by (run seed, epoch, video index), so a sample is the same whichever worker loads it and
whether or not the run was interrupted and resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import FparError
from .imageio import read_grey, read_mmap, read_rgb_many
from .manifest import Manifest
from .readers import block_of, reader_of
from .sampling import centred_stack_starts, flow_stack_start, flow_stack_starts, stack_indices, uniform_indices
from .transforms import crop_rgb, draw_code, draw_params, pooled_draw, transform_flow, transform_mmaps


class ClipDataset(Dataset):
    """Clips of the videos ``indices`` of a manifest.

    Each item is a dict:
        ``rgb``: (T, 3, S, S) uint8, the cropped and flipped frames, not normalised: a quarter of the float clip's
        bytes through the workers and to the device, where `fpar.data.transforms.normalize_batch` makes the model's
        ImageNet-normalised float input (the trainer does it after the copy; do it before calling a model on an
        item), ``flow``: (2L, S, S) float (or (K, 2L, S, S) for K test stacks),
        ``flow_seq``: (T, 2L, S, S) float, one stack of L flows centred on each of the T sampled RGB frames,
        ``mmaps``: (T, S, S) uint8 {0, 1}, ``label``: int, ``index``: int (video index in the manifest),
        ``static_idx``: int in [0, T) (the frame a static clip repeats),
        ``verb``, ``noun``: ints, when the dataset's vocabulary has verbs and nouns,
        ``draw``: int, the clip's crop/flip draw (`fpar.data.transforms.draw_code`; -1: the test transform).
    Only the requested ``modalities`` are loaded.
    """

    def __init__(
        self,
        manifest: Manifest,
        indices: list[int],
        cfg: DataConfig,
        *,
        modalities: tuple[str, ...] = ("rgb",),
        train: bool = False,
        seed: int = 0,
    ):
        self.manifest = manifest
        self.cfg = cfg
        self.modalities = tuple(modalities)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.indices = [i for i in indices if self._has_modalities(manifest.videos[i])]
        # (video index, draw) -> True when the clip's RGB input is not needed (its frozen-trunk features are in the
        # run's feature cache, `fpar.engine.feature_cache.CachedDraws`): the item then carries rgb=None, no decoding
        self.skip_rgb = None
        self.frame_cache = None  # data.frame_cache: decoded RGB frames, memory-mapped (fpar/data/frame_cache.py)
        if cfg.frame_cache and "rgb" in self.modalities:
            from .frame_cache import FrameCache

            self.frame_cache = FrameCache(cfg.frame_cache)
        if not self.indices and indices:
            raise FparError(
                f"none of the {len(indices)} selected videos under {manifest.root} has all of {', '.join(modalities)}; "
                "run `fpar data check` on it"
            )

    def _has_modalities(self, v) -> bool:
        if ("flow" in self.modalities or "flow_seq" in self.modalities) and not v.num_flows:
            return False
        if "mmaps" in self.modalities and not v.mmaps:
            return False
        return v.usable

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> list[int]:
        return [self.manifest.videos[i].label for i in self.indices]

    def __getitem__(self, i: int) -> dict:
        vid = self.indices[i]
        v = self.manifest.videos[vid]
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, self.epoch, vid, int(self.train)])
        p = draw_params(rng, train=self.train)
        if self.train and cfg.draw_pool:
            # one of the video's fixed pool of draws instead; the draw above is made all the same, so that ``rng``
            # gives this clip's other choices (its flow stack, its static frame) as it does without a pool
            p = pooled_draw(self.seed, self.epoch, vid, cfg.draw_pool)
        kw = dict(scale_size=cfg.scale_size, input_size=cfg.input_size)
        item: dict = {"label": v.label, "index": vid, "draw": draw_code(p)}
        if self.manifest.vocab.has_verb_noun:
            item["verb"], item["noun"] = v.verb_label, v.noun_label
        frame_idx = uniform_indices(v.num_frames, cfg.frames, method=cfg.sampling)
        if "rgb" in self.modalities and self.skip_rgb is not None and self.skip_rgb(vid, item["draw"]):
            item["rgb"] = None  # read from the feature cache instead (see collate_clips)
        elif "rgb" in self.modalities:
            frames = self.frame_cache.frames(v, frame_idx) if self.frame_cache is not None else None
            if frames is None:
                frames = _read_all(read_rgb_many, [v.rgb[k] for k in frame_idx], batch=True)
            item["rgb"] = crop_rgb(frames, p, **kw)  # (T, 3, S, S) uint8: normalised on the device (normalize_batch)
        if "mmaps" in self.modalities:
            item["mmaps"] = transform_mmaps(_read_all(read_mmap, [v.mmaps[k] for k in frame_idx]), p, **kw)
        if "flow" in self.modalities:
            m, L = v.num_flows, cfg.flow_stack
            if self.train or cfg.flow_stacks_test <= 1:
                starts = [flow_stack_start(m, L, train=self.train, rng=rng)]
            else:
                starts = flow_stack_starts(m, L, cfg.flow_stacks_test)
            stacks = []
            for s in starts:
                idx = stack_indices(s, L, m)
                fx = _read_all(read_grey, [v.flow_x[k] for k in idx])
                fy = _read_all(read_grey, [v.flow_y[k] for k in idx])
                stacks.append(_flow(fx, fy, p, v.flow_scale, kw))
            item["flow"] = stacks[0] if len(stacks) == 1 else torch.stack(stacks)  # (2L,S,S) or (K,2L,S,S)
        if "flow_seq" in self.modalities:
            m, L = v.num_flows, cfg.flow_stack
            seq = []
            # flow k starts at RGB frame k * flow_stride (EPIC-55's flow is at half the frame rate)
            for s in centred_stack_starts([k // v.flow_stride for k in frame_idx], m, L):
                idx = stack_indices(s, L, m)
                fx = _read_all(read_grey, [v.flow_x[k] for k in idx])
                fy = _read_all(read_grey, [v.flow_y[k] for k in idx])
                seq.append(_flow(fx, fy, p, v.flow_scale, kw))
            item["flow_seq"] = torch.stack(seq)  # (T, 2L, S, S): the crop and flip of the RGB frames
        item["static_idx"] = int(rng.integers(cfg.frames))
        return item


def collate_clips(items: list[dict]) -> dict:
    """``default_collate``, except that an ``rgb`` some items skipped (None, see ``ClipDataset.skip_rgb``) stays a
    list of B tensors-or-None instead of one (B, T, 3, S, S) tensor."""
    from torch.utils.data import default_collate

    if any(it.get("rgb", 0) is None for it in items):
        rest = default_collate([{k: v for k, v in it.items() if k != "rgb"} for it in items])
        rest["rgb"] = [it["rgb"] for it in items]
        return rest
    return default_collate(items)


def _flow(fx, fy, p, scale: float, kw) -> torch.Tensor:
    """One flow stack; ``scale`` brings a dataset's own flow encoding to fpar's (`VideoRecord.flow_scale`)."""
    x = transform_flow(fx, fy, p, **kw)
    return x.mul_(scale) if scale != 1.0 else x


def _read_all(reader, paths: list[str], *, batch: bool = False) -> list:
    """Decode the images of one clip; they must share one size (one crop box is drawn for the clip). ``batch``:
    ``reader`` takes the whole list (frames of one video file are decoded in one pass)."""
    images = reader(paths) if batch else [reader(p) for p in paths]
    first = images[0].shape[:2]
    for path, img in zip(paths, images):
        if img.shape[:2] != first:
            raise FparError(
                f"{path} is {img.shape[1]}x{img.shape[0]} but {paths[0]} is {first[1]}x{first[0]}: the frames of one "
                "video must share one size; re-extract the video's frames (fpar prepare writes one size)"
            )
    return images


@dataclass
class Splits:
    train: list[int]
    select: list[int]  # the videos the best epoch is chosen on
    test: list[int]
    select_on: str  # "test" (the report's protocol: S2) or "val" (held out of the training split)
    name: str = ""  # the reader's split in words ("train S1,S3,S4 / test S2")

    def describe(self, cfg: DataConfig) -> str:
        how = (
            "epochs selected on the test split (the report's protocol)"
            if self.select_on == "test"
            else f"epochs selected on a {cfg.val_fraction:.0%} validation split of the training videos"
        )
        split = f" ({self.name})" if self.name else ""
        return f"train {len(self.train)} videos, test {len(self.test)} videos{split}; {how}"


def make_splits(manifest: Manifest, cfg: DataConfig, *, seed: int = 0) -> Splits:
    """The reader's train/test split as configured; with ``select_on: val`` a class-stratified validation split
    comes out of training."""
    reader = reader_of(manifest)
    block = block_of(reader, cfg)
    train, test = reader.split(manifest, block)
    name = reader.describe_split(block) if reader.describe_split is not None else ""
    if cfg.select_on == "test":
        return Splits(train, test, test, "test", name)
    rng = np.random.default_rng(seed + 7919)
    by_class: dict[int, list[int]] = {}
    for i in train:
        by_class.setdefault(manifest.videos[i].label, []).append(i)
    val: list[int] = []
    for items in by_class.values():
        items = list(items)
        rng.shuffle(items)
        k = int(round(len(items) * cfg.val_fraction))
        if len(items) > 1:
            val += items[: max(k, 1)]
    keep = sorted(set(train) - set(val))
    if not keep:
        raise FparError(
            f"data.val_fraction={cfg.val_fraction} leaves no training videos ({len(train)} in the training split, all "
            "held out for validation); lower data.val_fraction"
        )
    return Splits(keep, sorted(val), test, "val", name)
