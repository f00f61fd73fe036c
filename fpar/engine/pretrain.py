"""Backbone pre-training on single frames, for machines without ImageNet weights (`fpar pretrain`).

Trains a torchvision ResNet (all layers, BatchNorm in train mode) to classify single frames of the training
subjects by noun (the object) or by action class, and saves a **torchvision-format state dict** (``conv1.weight``,
..., ``fc.weight``) that ``model.pretrained=PATH`` loads like ImageNet weights. Its fc becomes the classifier the
CAM reads, so with noun labels the CAM looks for objects, much as the ImageNet fc looks for ImageNet objects.

Training frames get a photometric jitter (`jitter_colour`: gain, tint, offset) on top of the clip crops: without it
the backbone learns the training subjects' lighting, and on the demo data its test-subject frame accuracy was 27%
after 4 epochs; with it, 55% (and 73% after 6 epochs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..data.dataset import make_splits
from ..data.imageio import read_rgb
from ..data.manifest import Manifest
from ..data.readers import read_dataset
from ..data.transforms import draw_params, transform_rgb
from ..errors import FparError
from ..models.backbone import build_trunk
from ..utils import seed_everything, torch_save_atomic


class FrameDataset(Dataset):
    """``per_video`` frames of each video (evenly spaced, jittered when training), one label per video."""

    def __init__(
        self,
        manifest: Manifest,
        indices: list[int],
        labels: list[int],
        cfg: DataConfig,
        *,
        per_video: int,
        train: bool,
        seed: int = 0,
        color_jitter: float = 0.0,
    ):
        self.items = []
        for i, y in zip(indices, labels):
            n = manifest.videos[i].num_frames
            for k in range(per_video):
                self.items.append((i, k, n, y))
        self.manifest, self.cfg, self.per_video, self.train, self.seed = manifest, cfg, per_video, train, seed
        self.color_jitter = color_jitter
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        vid, k, n, y = self.items[j]
        rng = np.random.default_rng([self.seed, self.epoch, j])
        lo, hi = (k * n) // self.per_video, max(((k + 1) * n) // self.per_video, (k * n) // self.per_video + 1)
        f = int(rng.integers(lo, hi)) if self.train else (lo + hi - 1) // 2
        p = draw_params(rng, train=self.train)
        img = read_rgb(self.manifest.videos[vid].rgb[min(f, n - 1)])
        if self.train and self.color_jitter > 0:
            img = jitter_colour(img, rng, self.color_jitter)
        x = transform_rgb(
            [img],
            p,
            scale_size=self.cfg.scale_size,
            input_size=self.cfg.input_size,
        )[0]
        return x, y


def jitter_colour(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with a random overall gain, per-channel tint and offset, each of relative size up
    to ``strength`` (gain and tint uniform in [1 - s, 1 + s], offset in [-s, s] x 64 levels).

    The subjects of a dataset differ in lighting and white balance; ImageNet features are largely invariant to that,
    and a backbone pre-trained on a few subjects' frames is not unless it sees such changes while it learns."""
    gain = rng.uniform(1 - strength, 1 + strength)
    tint = rng.uniform(1 - strength, 1 + strength, size=3)
    offset = rng.uniform(-strength, strength) * 64
    out = img.astype(np.float32) * (gain * tint) + offset
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def pretrain_backbone(
    root: str,
    out: str | Path,
    *,
    arch: str = "resnet18",
    target: str = "noun",
    input_size: int = 112,
    scale_size: int = 128,
    epochs: int = 4,
    batch_size: int = 32,
    per_video: int = 4,
    lr: float = 1e-3,
    color_jitter: float = 0.2,
    data: DataConfig | None = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    log=print,
) -> dict:
    """Train and save the backbone; returns {'train_acc', 'test_acc', 'classes', 'path'} (frame accuracy, %).

    ``data`` chooses the reader and its split (default: ``DataConfig(root=root)``, the reader's default split).
    ``color_jitter`` is the strength of `jitter_colour` on training frames (0 turns it off)."""
    from tqdm import tqdm

    if target not in ("noun", "class"):
        raise FparError(f"target must be 'noun' or 'class', got {target!r}")
    if not 0 <= color_jitter < 1:
        raise FparError(f"color_jitter must be in [0, 1) (0.2 = gains within 20%), got {color_jitter}")
    if epochs < 1 or batch_size < 1:
        raise FparError(f"epochs={epochs}, batch_size={batch_size}: give at least 1 of each")
    if not (math.isfinite(lr) and lr > 0):
        raise FparError(f"lr={lr}: give a finite learning rate above 0 (e.g. 1e-3)")
    if not 32 <= input_size <= scale_size:  # the trunk's five stride-2 stages need 32 px
        raise FparError(
            f"input_size={input_size}, scale_size={scale_size}: give sizes with 32 <= input size <= scale size"
        )
    if seed < 0:
        raise FparError(f"seed={seed}: give a seed of at least 0")
    seed_everything(seed)
    data = data if data is not None else DataConfig(root=str(root))
    manifest = read_dataset(data)
    if target == "noun" and not manifest.vocab.nouns:
        raise FparError(f"{root} has no noun labels (its reader gives actions only); use --target class")
    names = manifest.nouns() if target == "noun" else manifest.classes

    def lab(i):
        v = manifest.videos[i]
        return v.noun_label if target == "noun" else v.label

    cfg = DataConfig(input_size=input_size, scale_size=scale_size)
    splits = make_splits(manifest, data)
    tr_idx, te_idx = splits.train, splits.test
    train_ds = FrameDataset(
        manifest,
        tr_idx,
        [lab(i) for i in tr_idx],
        cfg,
        per_video=per_video,
        train=True,
        seed=seed,
        color_jitter=color_jitter,
    )
    test_ds = FrameDataset(manifest, te_idx, [lab(i) for i in te_idx], cfg, per_video=2, train=False, seed=seed)
    model = build_trunk(arch, pretrained=None, num_classes=len(names))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * ((len(train_ds) + batch_size - 1) // batch_size)
    )
    g = torch.Generator().manual_seed(seed)
    train_acc = test_acc = 0.0
    for epoch in range(epochs):
        train_ds.epoch = epoch
        model.train()
        correct = seen = 0
        loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=num_workers)
        it = (
            tqdm(loader, desc=f"pretrain {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True) if progress else loader
        )
        for x, y in it:
            logits = model.logits_from(model.forward_features(x)["conv5"])
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        train_acc = 100 * correct / max(seen, 1)
        last = epoch == epochs - 1
        if last:
            # BatchNorm statistics of the training frames as training draws them (crops and colour jitter), as
            # ImageNet backbones' statistics come from their augmented training images. Once, after the last
            # epoch: training normalises with batch statistics and its draws come from (seed, epoch, frame), so
            # re-estimating after every epoch (a quarter of the pre-training's time) changed nothing but the log.
            _recompute_bn_stats(model, train_ds, batch_size)
        test_acc = _frame_accuracy(model, test_ds, batch_size)
        bn = "" if last else ", BN running averages"
        log(
            f"pretrain epoch {epoch + 1}/{epochs}: train frames {train_acc:.1f}%, test frames {test_acc:.1f}% "
            f"({len(names)} {target}s{bn})"
        )
    sd = {k: v for k, v in model.state_dict().items()}
    torch_save_atomic(sd, out)
    return {"train_acc": train_acc, "test_acc": test_acc, "classes": names, "path": str(out)}


@torch.no_grad()
def _recompute_bn_stats(model, ds, batch_size, max_batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics with the final weights (cumulative average over a few batches):
    after a short schedule the running averages still mix in early-training statistics, and the downstream stages
    use the BN layers frozen in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i, (x, _) in enumerate(DataLoader(ds, batch_size=batch_size, shuffle=False)):
        if i >= max_batches:
            break
        model.forward_features(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


@torch.no_grad()
def _frame_accuracy(model, ds, batch_size) -> float:
    model.eval()
    correct = seen = 0
    for x, y in DataLoader(ds, batch_size=batch_size):
        correct += (model.logits_from(model.forward_features(x)["conv5"]).argmax(1) == y).sum().item()
        seen += len(y)
    return 100 * correct / max(seen, 1)
